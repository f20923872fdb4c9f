/*
 * v4l2_emu.c -- an emulated V4L2 capture device in user space, for tests and demos.
 *
 * No machine here has /dev/video* and none can load kernel modules (vivid, v4l2loopback, CUSE), so
 * this shared library, preloaded with LD_PRELOAD, stands in for one device node. It intercepts
 * open/open64/openat/openat64, close, poll, mmap/mmap64, ioctl and syscall(SYS_ioctl, ...) (the v4l
 * crate issues its ioctls through syscall()), answers the ioctls of a single-planar mmap capture
 * device and passes every other call through to libc untouched.
 *
 * The device's file descriptor is a memfd: the mmap'd buffers are real shared mappings of it, the
 * shim writes frames into its own mapping of the same memory, and DQBUF hands them out with
 * CLOCK_MONOTONIC timestamps (V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC) and driver sequence numbers.
 * Frames are produced on the device's own clock at the configured rate from STREAMON; a frame due
 * while no buffer is queued is dropped, so its sequence number is skipped, as a real driver does.
 *
 * Answered ioctls: QUERYCAP, ENUM_FMT, ENUM_FRAMESIZES, ENUM_FRAMEINTERVALS, G_FMT, S_FMT, TRY_FMT,
 * G_PARM, S_PARM, REQBUFS, QUERYBUF, QBUF, DQBUF, STREAMON, STREAMOFF, ENUMINPUT, G_INPUT, S_INPUT;
 * QUERYCTRL / QUERY_EXT_CTRL answer EINVAL (a device without controls); anything else ENOTTY.
 *
 * Settings (environment variables, read once at the first call):
 *   V4L2_EMU_DEVICE         device path to emulate (default /dev/video-emu)
 *   V4L2_EMU_FRAMES         frame file to serve (required; written by `echonet phantom
 *                           --emu-frames FILE`, format in src/capture/v4l2/emu_frames.rs):
 *                           "V4L2EMU1", u32 LE width, height, channels (1 or 3), frame count,
 *                           then the frames' pixels, then per frame u32 length + JPEG bytes
 *   V4L2_EMU_FORMAT         formats offered, comma-separated, in ENUM_FMT order; the first is the
 *                           current format at open. Each is FOURCC or FOURCC@WxH[/WxH...]; without
 *                           sizes a format is offered at the frame file's size. FOURCCs: YUYV,
 *                           UYVY, NV12, YU12, GREY, RGB3, BGR3, MJPG (MJPG only at the file's size,
 *                           its JPEGs are precomputed). Default YUYV. Frames are resampled
 *                           (nearest neighbour) to other sizes.
 *   V4L2_EMU_FPS            frame rate (default 30; decimals allowed, e.g. 29.97); the device also
 *                           offers half that rate as a second frame interval (S_PARM picks nearest)
 *   V4L2_EMU_STRIDE_PAD     bytes of padding added to each line (bytesperline), default 0
 *   V4L2_EMU_STALL_MS       stall: no frames for this long (once) ...
 *   V4L2_EMU_STALL_AFTER_MS ... starting this long after the first STREAMON (default 1000)
 *   V4L2_EMU_UNPLUG_AFTER_MS  the device vanishes this long after the first STREAMON: every call
 *                           on an open descriptor fails with ENODEV, poll reports POLLERR|POLLHUP,
 *                           and opening the path fails with ENOENT (once per process)
 *   V4L2_EMU_REPLUG_AFTER_MS  the device comes back this long after the unplug (new opens work;
 *                           descriptors from before stay dead). Default: never
 *   V4L2_EMU_UNPLUG_ERRNO   the errno of calls on a dead descriptor (default 19, ENODEV; 5, EIO,
 *                           is what some drivers return after a USB reset)
 *   V4L2_EMU_GARBAGE_EVERY  every Nth frame (by sequence, N >= 1) is garbage: random bytes, with
 *                           V4L2_BUF_FLAG_ERROR set for raw formats (for MJPG: not a JPEG)
 *   V4L2_EMU_SHORT_EVERY    every Nth frame is short: bytesused is a third of the image size
 *   V4L2_EMU_NO_MONOTONIC   1: timestamps are flagged TIMESTAMP_UNKNOWN instead of MONOTONIC
 *   V4L2_EMU_LOG            1: log each ioctl and event to stderr
 *
 * Limits: one device path, one open stream at a time per descriptor, single-planar
 * VIDEO_CAPTURE with MMAP memory only; poll on a set that mixes the device with other
 * descriptors only reports the device.
 *
 * Build: cc -shared -fPIC -O2 -o libv4l2emu.so v4l2_emu.c v4l2_emu_frames.c -ldl -lpthread
 * (scripts/v4l2-emulated.sh and tests/v4l2_emulated.rs do this).
 */
#include "v4l2_emu.h"


/* ---- real libc entry points ---- */
typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*close_fn)(int);
typedef int (*poll_fn)(struct pollfd *, nfds_t, int);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef long (*syscall_fn)(long, ...);

static open_fn real_open, real_open64;
static openat_fn real_openat, real_openat64;
static close_fn real_close;
static poll_fn real_poll;
static mmap_fn real_mmap, real_mmap64;
static ioctl_fn real_ioctl;
static syscall_fn real_syscall;

struct emu_config cfg;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct emu_fd fds[MAX_FDS];
static int generation = 1;
static int64_t first_streamon_ns = -1;
static int64_t unplugged_at_ns = -1; /* when the device vanished; -1 while present */
static int unplug_done;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define LOG(...)                                                                                   \
    do {                                                                                           \
        if (cfg.log) fprintf(stderr, "v4l2-emu: " __VA_ARGS__);                                    \
    } while (0)

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end) {
        fprintf(stderr, "v4l2-emu: %s=%s is not an integer; using %ld\n", name, v, dflt);
        return dflt;
    }
    return x;
}

static void init(void) {
    real_open = (open_fn)dlsym(RTLD_NEXT, "open");
    real_open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
    real_openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
    real_openat64 = (openat_fn)dlsym(RTLD_NEXT, "openat64");
    real_close = (close_fn)dlsym(RTLD_NEXT, "close");
    real_poll = (poll_fn)dlsym(RTLD_NEXT, "poll");
    real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    real_mmap64 = (mmap_fn)dlsym(RTLD_NEXT, "mmap64");
    real_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    real_syscall = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    for (int i = 0; i < MAX_FDS; i++) fds[i].fd = -1;
    cfg.log = env_long("V4L2_EMU_LOG", 0) != 0;
    const char *dev = getenv("V4L2_EMU_DEVICE");
    snprintf(cfg.device, sizeof cfg.device, "%s", dev && *dev ? dev : "/dev/video-emu");
    const char *fps = getenv("V4L2_EMU_FPS");
    double f = fps && *fps ? atof(fps) : 30.0;
    if (!(f >= 0.5 && f <= 1000.0)) {
        fprintf(stderr, "v4l2-emu: V4L2_EMU_FPS=%s is not a rate from 0.5 to 1000; using 30\n", fps);
        f = 30.0;
    }
    cfg.fps_milli = (uint32_t)(f * 1000.0 + 0.5);
    cfg.stride_pad = (uint32_t)env_long("V4L2_EMU_STRIDE_PAD", 0);
    cfg.stall_ms = env_long("V4L2_EMU_STALL_MS", 0);
    cfg.stall_after_ms = env_long("V4L2_EMU_STALL_AFTER_MS", 1000);
    cfg.unplug_after_ms = env_long("V4L2_EMU_UNPLUG_AFTER_MS", -1);
    cfg.replug_after_ms = env_long("V4L2_EMU_REPLUG_AFTER_MS", -1);
    cfg.unplug_errno = (int)env_long("V4L2_EMU_UNPLUG_ERRNO", ENODEV);
    cfg.garbage_every = env_long("V4L2_EMU_GARBAGE_EVERY", 0);
    cfg.short_every = env_long("V4L2_EMU_SHORT_EVERY", 0);
    cfg.no_monotonic = env_long("V4L2_EMU_NO_MONOTONIC", 0) != 0;
}

/* The frame file is read at the first open of the device, not at load: every process started
 * under LD_PRELOAD (compilers, shells) would otherwise read it. Called with the lock held. */
static void load_device(void) {
    static int loaded;
    if (loaded) return;
    loaded = 1;
    load_frames(getenv("V4L2_EMU_FRAMES"));
    if (cfg.nframes) parse_formats(getenv("V4L2_EMU_FORMAT"));
    LOG("emulating %s: %d formats, %ux%u x%u frames, %.3f fps\n", cfg.device, cfg.nformats, cfg.fw,
        cfg.fh, cfg.nframes, cfg.fps_milli / 1000.0);
}

static void ensure_init(void) { pthread_once(&once, init); }

/* ---- unplug / replug, checked under the lock ---- */
static void update_plug(int64_t now) {
    if (first_streamon_ns < 0) return;
    if (!unplug_done && cfg.unplug_after_ms >= 0 &&
        now - first_streamon_ns >= cfg.unplug_after_ms * 1000000LL) {
        unplug_done = 1;
        unplugged_at_ns = first_streamon_ns + cfg.unplug_after_ms * 1000000LL;
        generation++; /* every descriptor open so far is dead for good */
        LOG("unplugged\n");
    }
    if (unplugged_at_ns >= 0 && cfg.replug_after_ms >= 0 &&
        now - unplugged_at_ns >= cfg.replug_after_ms * 1000000LL) {
        unplugged_at_ns = -1;
        LOG("plugged back in\n");
    }
}

static struct emu_fd *find(int fd) {
    if (fd < 0) return NULL;
    for (int i = 0; i < MAX_FDS; i++)
        if (fds[i].fd == fd) return &fds[i];
    return NULL;
}

static int dead(struct emu_fd *e) { return e->generation != generation; }

/* ---- formats ---- */
static struct format *format_of(uint32_t fourcc) {
    for (int i = 0; i < cfg.nformats; i++)
        if (cfg.formats[i].fourcc == fourcc) return &cfg.formats[i];
    return NULL;
}

static void fill_pix(struct emu_fd *e, struct v4l2_pix_format *pix) {
    pix->width = e->width;
    pix->height = e->height;
    pix->pixelformat = e->fourcc;
    pix->field = V4L2_FIELD_NONE;
    pix->bytesperline = e->bytesperline;
    pix->sizeimage = e->sizeimage;
    pix->colorspace = (e->fourcc == fourcc_of("RGB3") || e->fourcc == fourcc_of("BGR3") ||
                       e->fourcc == fourcc_of("GREY"))
                          ? V4L2_COLORSPACE_SRGB
                          : V4L2_COLORSPACE_SMPTE170M;
    pix->priv = 0;
    pix->flags = 0;
    pix->ycbcr_enc = 0;
    pix->quantization = 0;
    pix->xfer_func = 0;
}

/* The format the device would use for a request: its fourcc if offered (else the current one),
 * the offered size nearest to the requested one. */
static void choose(struct emu_fd *e, struct v4l2_pix_format *pix, uint32_t *fourcc, uint32_t *w,
                   uint32_t *h) {
    struct format *fmt = format_of(pix->pixelformat);
    if (!fmt) fmt = format_of(e->fourcc);
    *fourcc = fmt->fourcc;
    long best = -1;
    for (int i = 0; i < fmt->nsizes; i++) {
        long d = labs((long)fmt->sizes[i].w - (long)pix->width) +
                 labs((long)fmt->sizes[i].h - (long)pix->height);
        if (best < 0 || d < best) {
            best = d;
            *w = fmt->sizes[i].w;
            *h = fmt->sizes[i].h;
        }
    }
}

static void set_format(struct emu_fd *e, uint32_t fourcc, uint32_t w, uint32_t h) {
    e->fourcc = fourcc;
    e->width = w;
    e->height = h;
    layout(fourcc, w, h, &e->bytesperline, &e->sizeimage);
}

/* Frame k in the stream's format: rendered once per source frame (a real device produces frames
 * on its own; here production runs in the caller's DQBUF/poll, so it must cost little). */
static uint32_t render_cached(struct emu_fd *e, uint64_t k, uint8_t *dst) {
    uint32_t i = (uint32_t)(k % cfg.nframes);
    if (!e->cache) {
        e->cache = calloc(cfg.nframes, sizeof *e->cache);
        e->cache_len = calloc(cfg.nframes, sizeof *e->cache_len);
    }
    if (e->cache && e->cache_len && !e->cache[i]) {
        uint8_t *c = malloc(e->buf_len);
        if (c) {
            e->cache_len[i] = render(e, k, c);
            e->cache[i] = c;
        }
    }
    if (!e->cache || !e->cache_len || !e->cache[i]) return render(e, k, dst);
    memcpy(dst, e->cache[i], e->cache_len[i]);
    return e->cache_len[i];
}

static uint64_t rng_next(struct emu_fd *e) {
    e->rng += 0x9E3779B97F4A7C15ULL;
    uint64_t z = e->rng;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint32_t gcd(uint32_t a, uint32_t b) {
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* num/den seconds in lowest terms, as drivers report them (1/30, not 1000/30000). */
static struct v4l2_fract fract(uint32_t num, uint32_t den) {
    uint32_t g = gcd(num, den);
    if (g == 0) g = 1;
    return (struct v4l2_fract){num / g, den / g};
}

static int64_t interval_ns(struct emu_fd *e) {
    return (int64_t)e->interval_num * 1000000000LL / e->interval_den;
}

/* Is the stream inside the configured stall? */
static int stalled(int64_t t) {
    if (cfg.stall_ms <= 0 || first_streamon_ns < 0) return 0;
    int64_t from = first_streamon_ns + cfg.stall_after_ms * 1000000LL;
    return t >= from && t < from + cfg.stall_ms * 1000000LL;
}

/* Produces every frame due by `now`: each goes into the oldest queued buffer, or is dropped when
 * none is queued (its sequence number is then missing downstream, as with a real driver). */
static void produce(struct emu_fd *e, int64_t now) {
    if (!e->streaming) return;
    int64_t step = interval_ns(e);
    uint64_t due = (uint64_t)((now - e->t0_ns) / step) + 1; /* frames 0..due-1 are due */
    if (due > e->next_k + MAX_BUFFERS) e->next_k = due - MAX_BUFFERS; /* long gap: all dropped */
    for (; e->next_k < due; e->next_k++) {
        uint64_t k = e->next_k;
        int64_t t = e->t0_ns + (int64_t)k * step;
        if (stalled(t) || e->nqueued == 0) continue;
        uint32_t idx = e->queue[0];
        memmove(e->queue, e->queue + 1, (e->nqueued - 1) * sizeof *e->queue);
        e->nqueued--;
        struct buffer *b = &e->bufs[idx];
        uint8_t *dst = e->map + (uint64_t)idx * e->buf_len;
        b->flags = V4L2_BUF_FLAG_MAPPED | V4L2_BUF_FLAG_DONE | V4L2_BUF_FLAG_TSTAMP_SRC_EOF |
                   (cfg.no_monotonic ? V4L2_BUF_FLAG_TIMESTAMP_UNKNOWN
                                     : V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC);
        if (cfg.garbage_every > 0 && (k + 1) % (uint64_t)cfg.garbage_every == 0) {
            uint32_t n = e->fourcc == fourcc_of("MJPG") ? e->buf_len / 4 : e->sizeimage;
            for (uint32_t i = 0; i < n; i += 8) {
                uint64_t r = rng_next(e);
                memcpy(dst + i, &r, n - i < 8 ? n - i : 8);
            }
            if (e->fourcc != fourcc_of("MJPG")) b->flags |= V4L2_BUF_FLAG_ERROR;
            b->bytesused = n;
        } else {
            b->bytesused = render_cached(e, k, dst);
            if (cfg.short_every > 0 && (k + 1) % (uint64_t)cfg.short_every == 0)
                b->bytesused /= 3;
        }
        b->sequence = (uint32_t)k;
        b->timestamp.tv_sec = t / 1000000000LL;
        b->timestamp.tv_usec = (t % 1000000000LL) / 1000;
        b->state = BUF_DONE;
        e->done[e->ndone++] = idx;
    }
}

/* When the next frame is due (ns, CLOCK_MONOTONIC). */
static int64_t next_due(struct emu_fd *e) {
    return e->t0_ns + (int64_t)e->next_k * interval_ns(e);
}

/* ---- ioctl ---- */
static void free_buffers(struct emu_fd *e) {
    if (e->map) munmap(e->map, (size_t)e->nbufs * e->buf_len);
    e->map = NULL;
    for (uint32_t i = 0; e->cache && i < cfg.nframes; i++) free(e->cache[i]);
    free(e->cache);
    free(e->cache_len);
    e->cache = NULL;
    e->cache_len = NULL;
    e->nbufs = 0;
    e->nqueued = e->ndone = 0;
}

static const char *ioctl_name(unsigned long req) {
    switch (req) {
#define N(x) case x: return #x;
        N(VIDIOC_QUERYCAP) N(VIDIOC_ENUM_FMT) N(VIDIOC_ENUM_FRAMESIZES) N(VIDIOC_ENUM_FRAMEINTERVALS)
        N(VIDIOC_G_FMT) N(VIDIOC_S_FMT) N(VIDIOC_TRY_FMT) N(VIDIOC_G_PARM) N(VIDIOC_S_PARM)
        N(VIDIOC_REQBUFS) N(VIDIOC_QUERYBUF) N(VIDIOC_QBUF) N(VIDIOC_DQBUF) N(VIDIOC_STREAMON)
        N(VIDIOC_STREAMOFF) N(VIDIOC_QUERYCTRL) N(VIDIOC_QUERY_EXT_CTRL) N(VIDIOC_ENUMINPUT)
        N(VIDIOC_G_INPUT) N(VIDIOC_S_INPUT)
#undef N
    default: return "unknown";
    }
}

/* Returns 0 or an errno value. Called with the lock held. */
static int do_ioctl(struct emu_fd *e, unsigned long req, void *arg) {
    int64_t now = now_ns();
    update_plug(now);
    if (dead(e)) return cfg.unplug_errno;
    if (!arg && req != VIDIOC_STREAMON && req != VIDIOC_STREAMOFF) return EFAULT;
    switch (req) {
    case VIDIOC_QUERYCAP: {
        struct v4l2_capability *c = arg;
        memset(c, 0, sizeof *c);
        snprintf((char *)c->driver, sizeof c->driver, "v4l2-emu");
        snprintf((char *)c->card, sizeof c->card, "echonet emulated capture");
        snprintf((char *)c->bus_info, sizeof c->bus_info, "platform:v4l2-emu");
        c->version = 0x00060000;
        c->device_caps = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING;
        c->capabilities = c->device_caps | V4L2_CAP_DEVICE_CAPS;
        return 0;
    }
    case VIDIOC_ENUM_FMT: {
        struct v4l2_fmtdesc *d = arg;
        if (d->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || d->index >= (uint32_t)cfg.nformats)
            return EINVAL;
        uint32_t f = cfg.formats[d->index].fourcc;
        uint32_t index = d->index;
        memset(d, 0, sizeof *d);
        d->index = index;
        d->type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        d->pixelformat = f;
        d->flags = f == fourcc_of("MJPG") ? V4L2_FMT_FLAG_COMPRESSED : 0;
        snprintf((char *)d->description, sizeof d->description, "emulated %.4s", (char *)&f);
        return 0;
    }
    case VIDIOC_ENUM_FRAMESIZES: {
        struct v4l2_frmsizeenum *s = arg;
        struct format *fmt = format_of(s->pixel_format);
        if (!fmt || s->index >= (uint32_t)fmt->nsizes) return EINVAL;
        s->type = V4L2_FRMSIZE_TYPE_DISCRETE;
        s->discrete.width = fmt->sizes[s->index].w;
        s->discrete.height = fmt->sizes[s->index].h;
        return 0;
    }
    case VIDIOC_ENUM_FRAMEINTERVALS: {
        struct v4l2_frmivalenum *v = arg;
        struct format *fmt = format_of(v->pixel_format);
        int size_ok = 0;
        for (int i = 0; fmt && i < fmt->nsizes; i++)
            size_ok |= fmt->sizes[i].w == v->width && fmt->sizes[i].h == v->height;
        if (!size_ok || v->index > 1) return EINVAL;
        v->type = V4L2_FRMIVAL_TYPE_DISCRETE;
        v->discrete = fract(v->index == 0 ? 1000 : 2000, cfg.fps_milli);
        return 0;
    }
    case VIDIOC_G_FMT: {
        struct v4l2_format *f = arg;
        if (f->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        fill_pix(e, &f->fmt.pix);
        return 0;
    }
    case VIDIOC_S_FMT:
    case VIDIOC_TRY_FMT: {
        struct v4l2_format *f = arg;
        if (f->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        if (req == VIDIOC_S_FMT && (e->streaming || e->nbufs)) return EBUSY;
        uint32_t fourcc = e->fourcc, w = e->width, h = e->height;
        choose(e, &f->fmt.pix, &fourcc, &w, &h);
        if (req == VIDIOC_S_FMT) {
            set_format(e, fourcc, w, h);
            fill_pix(e, &f->fmt.pix);
        } else {
            struct emu_fd tmp = *e;
            set_format(&tmp, fourcc, w, h);
            fill_pix(&tmp, &f->fmt.pix);
        }
        return 0;
    }
    case VIDIOC_G_PARM:
    case VIDIOC_S_PARM: {
        struct v4l2_streamparm *p = arg;
        if (p->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        if (req == VIDIOC_S_PARM) {
            if (e->streaming) return EBUSY;
            struct v4l2_fract want = p->parm.capture.timeperframe;
            /* nearest of the two offered intervals: 1/fps and 2/fps */
            if (want.numerator && want.denominator) {
                double asked = (double)want.numerator / want.denominator;
                double full = 1000.0 / cfg.fps_milli;
                e->interval_num = asked > 1.5 * full ? 2000 : 1000;
                e->interval_den = cfg.fps_milli;
            }
        }
        memset(&p->parm.capture, 0, sizeof p->parm.capture);
        p->parm.capture.capability = V4L2_CAP_TIMEPERFRAME;
        p->parm.capture.timeperframe = fract(e->interval_num, e->interval_den);
        p->parm.capture.readbuffers = 0;
        return 0;
    }
    case VIDIOC_REQBUFS: {
        struct v4l2_requestbuffers *r = arg;
        if (r->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || r->memory != V4L2_MEMORY_MMAP) return EINVAL;
        if (e->streaming) return EBUSY;
        free_buffers(e);
        if (r->count == 0) return 0;
        uint32_t n = r->count < 2 ? 2 : r->count > MAX_BUFFERS ? MAX_BUFFERS : r->count;
        long page = sysconf(_SC_PAGESIZE);
        e->buf_len = (uint32_t)(((long)e->sizeimage + page - 1) / page * page);
        if (ftruncate(e->fd, (off_t)n * e->buf_len) != 0) return ENOMEM;
        void *m = real_mmap(NULL, (size_t)n * e->buf_len, PROT_READ | PROT_WRITE, MAP_SHARED,
                            e->fd, 0);
        if (m == MAP_FAILED) return ENOMEM;
        e->map = m;
        e->nbufs = n;
        for (uint32_t i = 0; i < n; i++) memset(&e->bufs[i], 0, sizeof e->bufs[i]);
        r->count = n;
        r->capabilities = V4L2_BUF_CAP_SUPPORTS_MMAP;
        return 0;
    }
    case VIDIOC_QUERYBUF:
    case VIDIOC_QBUF:
    case VIDIOC_DQBUF: {
        struct v4l2_buffer *b = arg;
        if (b->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || b->memory != V4L2_MEMORY_MMAP) return EINVAL;
        if (req == VIDIOC_DQBUF) {
            if (!e->streaming) return EINVAL;
            produce(e, now);
            if (e->ndone == 0) return EAGAIN;
            uint32_t idx = e->done[0];
            memmove(e->done, e->done + 1, (e->ndone - 1) * sizeof *e->done);
            e->ndone--;
            e->bufs[idx].state = BUF_USER;
            b->index = idx;
        }
        if (b->index >= e->nbufs) return EINVAL;
        struct buffer *s = &e->bufs[b->index];
        if (req == VIDIOC_QBUF) {
            if (s->state != BUF_USER) return EINVAL;
            s->state = BUF_QUEUED;
            e->queue[e->nqueued++] = b->index;
        }
        b->length = e->buf_len;
        b->m.offset = b->index * e->buf_len;
        b->bytesused = req == VIDIOC_DQBUF ? s->bytesused : 0;
        b->flags = V4L2_BUF_FLAG_MAPPED | (s->state == BUF_QUEUED ? V4L2_BUF_FLAG_QUEUED : 0) |
                   (req == VIDIOC_DQBUF ? s->flags : 0);
        b->field = V4L2_FIELD_NONE;
        b->sequence = req == VIDIOC_DQBUF ? s->sequence : 0;
        if (req == VIDIOC_DQBUF) b->timestamp = s->timestamp;
        return 0;
    }
    case VIDIOC_STREAMON: {
        if (!arg || *(int *)arg != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        if (e->nbufs == 0) return EINVAL;
        if (e->streaming) return 0;
        e->streaming = 1;
        e->t0_ns = now;
        e->next_k = 0;
        if (first_streamon_ns < 0) first_streamon_ns = now;
        return 0;
    }
    case VIDIOC_STREAMOFF: {
        if (!arg || *(int *)arg != V4L2_BUF_TYPE_VIDEO_CAPTURE) return EINVAL;
        e->streaming = 0;
        e->nqueued = e->ndone = 0;
        for (uint32_t i = 0; i < e->nbufs; i++) e->bufs[i].state = BUF_USER;
        return 0;
    }
    case VIDIOC_ENUMINPUT: {
        struct v4l2_input *in = arg;
        if (in->index != 0) return EINVAL;
        memset(in, 0, sizeof *in);
        snprintf((char *)in->name, sizeof in->name, "emulated input");
        in->type = V4L2_INPUT_TYPE_CAMERA;
        return 0;
    }
    case VIDIOC_G_INPUT: *(int *)arg = 0; return 0;
    case VIDIOC_S_INPUT: return *(int *)arg == 0 ? 0 : EINVAL;
    case VIDIOC_QUERYCTRL:
    case VIDIOC_QUERY_EXT_CTRL: return EINVAL;
    default: return ENOTTY;
    }
}

static int emu_ioctl(int fd, unsigned long req, void *arg) {
    pthread_mutex_lock(&lock);
    struct emu_fd *e = find(fd);
    if (!e) {
        pthread_mutex_unlock(&lock);
        return -2; /* not ours */
    }
    /* A blocking descriptor waits for a frame in DQBUF, as the kernel does. */
    int err;
    for (;;) {
        err = do_ioctl(e, req, arg);
        if (err != EAGAIN || req != VIDIOC_DQBUF || e->nonblocking) break;
        int64_t wait = next_due(e) - now_ns();
        pthread_mutex_unlock(&lock);
        struct timespec ts = {0, wait > 1000000 ? 1000000 : wait > 0 ? wait : 100000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&lock);
    }
    LOG("%s on fd %d -> %s\n", ioctl_name(req), fd, err ? strerror(err) : "ok");
    pthread_mutex_unlock(&lock);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* ---- intercepted entry points ---- */
static int emu_open(const char *path, int flags, int *handled) {
    *handled = 0;
    ensure_init();
    if (!path || strcmp(path, cfg.device) != 0) return -1;
    *handled = 1;
    pthread_mutex_lock(&lock);
    load_device();
    update_plug(now_ns());
    int err = 0;
    if (unplugged_at_ns >= 0) err = ENOENT;
    else if (cfg.nframes == 0 || cfg.nformats == 0) {
        fprintf(stderr, "v4l2-emu: %s: %s\n", cfg.device,
                cfg.frames_error[0] ? cfg.frames_error : "no format to offer (V4L2_EMU_FORMAT)");
        err = ENODEV;
    }
    struct emu_fd *e = NULL;
    for (int i = 0; !err && i < MAX_FDS && !e; i++)
        if (fds[i].fd < 0) e = &fds[i];
    if (!err && !e) err = EMFILE;
    int fd = -1;
    if (!err) {
        fd = (int)real_syscall(SYS_memfd_create, "v4l2-emu",
                               (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
        if (fd < 0) err = errno;
    }
    if (!err) {
        memset(e, 0, sizeof *e);
        e->fd = fd;
        e->generation = generation;
        e->nonblocking = (flags & O_NONBLOCK) != 0;
        e->interval_num = 1000;
        e->interval_den = cfg.fps_milli;
        e->rng = (uint64_t)fd * 7919 + 1;
        set_format(e, cfg.formats[0].fourcc, cfg.formats[0].sizes[0].w, cfg.formats[0].sizes[0].h);
    }
    LOG("open %s -> %d (%s)\n", path, fd, err ? strerror(err) : "ok");
    pthread_mutex_unlock(&lock);
    if (err) {
        errno = err;
        return -1;
    }
    return fd;
}

#define OPEN_BODY(real_call)                                                                       \
    int handled;                                                                                   \
    int fd = emu_open(path, flags, &handled);                                                      \
    if (handled) return fd;                                                                        \
    mode_t mode = 0;                                                                               \
    if (flags & (O_CREAT | __O_TMPFILE)) {                                                         \
        va_list ap;                                                                                \
        va_start(ap, flags);                                                                       \
        mode = va_arg(ap, mode_t);                                                                 \
        va_end(ap);                                                                                \
    }                                                                                              \
    return real_call;

int open(const char *path, int flags, ...) { OPEN_BODY(real_open(path, flags, mode)) }
int open64(const char *path, int flags, ...) { OPEN_BODY(real_open64(path, flags, mode)) }
int openat(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat(dirfd, path, flags, mode))
}
int openat64(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat64(dirfd, path, flags, mode))
}

int close(int fd) {
    ensure_init();
    pthread_mutex_lock(&lock);
    struct emu_fd *e = find(fd);
    if (e) {
        free_buffers(e);
        e->fd = -1;
        LOG("close %d\n", fd);
    }
    pthread_mutex_unlock(&lock);
    return real_close(fd);
}

int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    ensure_init();
    int r = emu_ioctl(fd, req, arg);
    if (r != -2) return r;
    return real_ioctl(fd, req, arg);
}

long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    ensure_init();
    if (number == SYS_ioctl) {
        int r = emu_ioctl((int)a1, (unsigned long)a2, (void *)a3);
        if (r != -2) return r;
    }
    return real_syscall(number, a1, a2, a3, a4, a5, a6);
}

static void *emu_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off, mmap_fn real) {
    ensure_init();
    pthread_mutex_lock(&lock);
    struct emu_fd *e = find(fd);
    int err = 0;
    if (e) {
        update_plug(now_ns());
        if (dead(e)) err = cfg.unplug_errno;
        else if (!(flags & MAP_SHARED) || off < 0 || e->buf_len == 0 ||
                 (uint64_t)off % e->buf_len != 0 || (uint64_t)off / e->buf_len >= e->nbufs ||
                 len > e->buf_len)
            err = EINVAL;
        LOG("mmap fd %d offset %ld length %zu -> %s\n", fd, (long)off, len, err ? strerror(err) : "ok");
    }
    pthread_mutex_unlock(&lock);
    if (err) {
        errno = err;
        return MAP_FAILED;
    }
    return real(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    ensure_init();
    return emu_mmap(addr, len, prot, flags, fd, off, real_mmap);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    ensure_init();
    return emu_mmap(addr, len, prot, flags, fd, off, real_mmap64 ? real_mmap64 : real_mmap);
}

int poll(struct pollfd *pfds, nfds_t n, int timeout_ms) {
    ensure_init();
    pthread_mutex_lock(&lock);
    struct pollfd *mine = NULL;
    for (nfds_t i = 0; i < n && !mine; i++)
        if (find(pfds[i].fd)) mine = &pfds[i];
    pthread_mutex_unlock(&lock);
    if (!mine) return real_poll(pfds, n, timeout_ms);
    for (nfds_t i = 0; i < n; i++) pfds[i].revents = 0;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ns() + (int64_t)timeout_ms * 1000000LL;
    for (;;) {
        pthread_mutex_lock(&lock);
        int64_t now = now_ns();
        update_plug(now);
        struct emu_fd *e = find(mine->fd);
        short ev = 0;
        int64_t wake = deadline;
        if (!e || dead(e)) {
            ev = POLLERR | POLLHUP;
        } else if (e->streaming) {
            produce(e, now);
            if (e->ndone) ev = mine->events & (POLLIN | POLLRDNORM);
            else wake = next_due(e) < wake ? next_due(e) : wake;
        } else {
            ev = POLLERR; /* not streaming: the kernel reports an error condition */
        }
        pthread_mutex_unlock(&lock);
        if (ev) {
            mine->revents = ev;
            return 1;
        }
        if (now >= deadline) return 0;
        /* sleep in short steps so an unplug is noticed promptly */
        int64_t wait = wake - now;
        if (wait > 5000000) wait = 5000000;
        if (wait < 50000) wait = 50000;
        struct timespec ts = {0, (long)wait};
        nanosleep(&ts, NULL);
    }
}
