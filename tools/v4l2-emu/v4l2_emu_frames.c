/* v4l2_emu_frames.c -- the emulated device's pictures: reads the frame file, parses the
 * offered formats (V4L2_EMU_FORMAT), lays out and renders each pixel format (BT.601 limited
 * range YCbCr, the inverse of the project's decoder). See v4l2_emu.c for the settings. */
#include "v4l2_emu.h"

uint32_t fourcc_of(const char *s) {
    return v4l2_fourcc(s[0], s[1], s[2], s[3]);
}

static int known_fourcc(uint32_t f) {
    static const char *known[] = {"YUYV", "UYVY", "NV12", "YU12", "GREY", "RGB3", "BGR3", "MJPG"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (f == fourcc_of(known[i])) return 1;
    return 0;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads the whole frame file; on failure leaves a message in cfg.frames_error. */
void load_frames(const char *path) {
    if (!path || !*path) {
        snprintf(cfg.frames_error, sizeof cfg.frames_error,
                 "V4L2_EMU_FRAMES is not set (write one with `echonet phantom --emu-frames FILE`)");
        return;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(cfg.frames_error, sizeof cfg.frames_error, "cannot open V4L2_EMU_FRAMES=%s: %s",
                 path, strerror(errno));
        return;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = len > 0 ? malloc((size_t)len) : NULL;
    if (!data || fread(data, 1, (size_t)len, f) != (size_t)len) {
        snprintf(cfg.frames_error, sizeof cfg.frames_error, "cannot read %s", path);
        fclose(f);
        free(data);
        return;
    }
    fclose(f);
    if (len < 24 || memcmp(data, "V4L2EMU1", 8) != 0) {
        snprintf(cfg.frames_error, sizeof cfg.frames_error,
                 "%s: not a V4L2EMU1 frame file (magic missing)", path);
        free(data);
        return;
    }
    cfg.fw = rd32(data + 8);
    cfg.fh = rd32(data + 12);
    cfg.fch = rd32(data + 16);
    cfg.nframes = rd32(data + 20);
    uint64_t frame_bytes = (uint64_t)cfg.fw * cfg.fh * cfg.fch;
    if (cfg.fw == 0 || cfg.fh == 0 || (cfg.fch != 1 && cfg.fch != 3) || cfg.nframes == 0 ||
        24 + frame_bytes * cfg.nframes > (uint64_t)len) {
        snprintf(cfg.frames_error, sizeof cfg.frames_error,
                 "%s: header says %ux%u, %u channels, %u frames, which does not fit %ld bytes", path,
                 cfg.fw, cfg.fh, cfg.fch, cfg.nframes, len);
        free(data);
        cfg.nframes = 0;
        return;
    }
    cfg.pixels = data + 24;
    cfg.jpeg = calloc(cfg.nframes, sizeof *cfg.jpeg);
    cfg.jpeg_len = calloc(cfg.nframes, sizeof *cfg.jpeg_len);
    uint64_t off = 24 + frame_bytes * cfg.nframes;
    for (uint32_t i = 0; i < cfg.nframes && off + 4 <= (uint64_t)len; i++) {
        uint32_t n = rd32(data + off);
        off += 4;
        if (off + n > (uint64_t)len) break;
        cfg.jpeg[i] = n ? data + off : NULL;
        cfg.jpeg_len[i] = n;
        if (n > cfg.jpeg_max) cfg.jpeg_max = n;
        off += n;
    }
}

void parse_formats(const char *spec) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec && *spec ? spec : "YUYV");
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && cfg.nformats < MAX_FORMATS;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (strlen(tok) < 4) continue;
        struct format *fmt = &cfg.formats[cfg.nformats];
        memset(fmt, 0, sizeof *fmt);
        fmt->fourcc = fourcc_of(tok);
        if (!known_fourcc(fmt->fourcc)) {
            fprintf(stderr, "v4l2-emu: V4L2_EMU_FORMAT entry %.4s is not one of YUYV, UYVY, NV12, "
                            "YU12, GREY, RGB3, BGR3, MJPG; left out\n", tok);
            continue;
        }
        const char *at = strchr(tok, '@');
        if (at && fmt->fourcc != fourcc_of("MJPG")) {
            char *s = (char *)at + 1, *save2 = NULL;
            for (char *sz = strtok_r(s, "/", &save2); sz && fmt->nsizes < MAX_SIZES;
                 sz = strtok_r(NULL, "/", &save2)) {
                unsigned w, h;
                if (sscanf(sz, "%ux%u", &w, &h) == 2 && w >= 2 && h >= 2 && w % 2 == 0 &&
                    h % 2 == 0)
                    fmt->sizes[fmt->nsizes++] = (struct size){w, h};
                else
                    fprintf(stderr, "v4l2-emu: size %s is not an even WxH; left out\n", sz);
            }
        }
        if (fmt->nsizes == 0) fmt->sizes[fmt->nsizes++] = (struct size){cfg.fw & ~1u, cfg.fh & ~1u};
        cfg.nformats++;
    }
}

void layout(uint32_t fourcc, uint32_t w, uint32_t h, uint32_t *bpl, uint32_t *size) {
    uint32_t pad = cfg.stride_pad;
    if (fourcc == fourcc_of("YUYV") || fourcc == fourcc_of("UYVY")) {
        *bpl = w * 2 + pad;
        *size = *bpl * h;
    } else if (fourcc == fourcc_of("RGB3") || fourcc == fourcc_of("BGR3")) {
        *bpl = w * 3 + pad;
        *size = *bpl * h;
    } else if (fourcc == fourcc_of("GREY")) {
        *bpl = w + pad;
        *size = *bpl * h;
    } else if (fourcc == fourcc_of("NV12")) {
        *bpl = w + (pad & ~1u);
        *size = *bpl * h + *bpl * (h / 2);
    } else if (fourcc == fourcc_of("YU12")) {
        *bpl = w + (pad & ~1u);
        *size = *bpl * h + 2 * (*bpl / 2) * (h / 2);
    } else { /* MJPG: compressed, no lines */
        *bpl = 0;
        *size = cfg.jpeg_max > w * h ? cfg.jpeg_max : w * h;
    }
}

/* ---- frame production ---- */
static uint8_t clamp8(int v) { return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v; }

/* BT.601 limited range, the inverse of the project's decoder. */
static void rgb_to_yuv(const uint8_t *p, int *y, int *u, int *v) {
    int r = p[0], g = p[1], b = p[2];
    *y = (66 * r + 129 * g + 25 * b + 128) / 256 + 16;
    *u = (-38 * r - 74 * g + 112 * b + 128) / 256 + 128;
    *v = (112 * r - 94 * g - 18 * b + 128) / 256 + 128;
}

/* Pixel (x, y) of frame k, resampled to the stream's size, as RGB. */
static void source_rgb(uint64_t k, struct emu_fd *e, uint32_t x, uint32_t y, uint8_t out[3]) {
    uint32_t sx = (uint32_t)((uint64_t)x * cfg.fw / e->width);
    uint32_t sy = (uint32_t)((uint64_t)y * cfg.fh / e->height);
    const uint8_t *p = cfg.pixels + ((k % cfg.nframes) * cfg.fh * cfg.fw + (uint64_t)sy * cfg.fw + sx) * cfg.fch;
    if (cfg.fch == 1) {
        out[0] = out[1] = out[2] = p[0];
    } else {
        out[0] = p[0];
        out[1] = p[1];
        out[2] = p[2];
    }
}

uint32_t render(struct emu_fd *e, uint64_t k, uint8_t *dst) {
    uint32_t w = e->width, h = e->height, bpl = e->bytesperline, f = e->fourcc;
    uint8_t px[3], px2[3];
    int y0, u0, v0, y1, u1, v1;
    if (f == fourcc_of("MJPG")) {
        uint32_t i = (uint32_t)(k % cfg.nframes);
        uint32_t n = cfg.jpeg_len[i] < e->buf_len ? cfg.jpeg_len[i] : e->buf_len;
        if (cfg.jpeg[i]) memcpy(dst, cfg.jpeg[i], n);
        return n;
    }
    memset(dst, 0, e->sizeimage);
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *row = dst + (uint64_t)y * bpl;
        if (f == fourcc_of("RGB3") || f == fourcc_of("BGR3") || f == fourcc_of("GREY")) {
            for (uint32_t x = 0; x < w; x++) {
                source_rgb(k, e, x, y, px);
                if (f == fourcc_of("GREY")) {
                    row[x] = (uint8_t)((77 * px[0] + 150 * px[1] + 29 * px[2] + 128) >> 8);
                } else if (f == fourcc_of("RGB3")) {
                    memcpy(row + 3 * x, px, 3);
                } else {
                    row[3 * x] = px[2], row[3 * x + 1] = px[1], row[3 * x + 2] = px[0];
                }
            }
        } else if (f == fourcc_of("YUYV") || f == fourcc_of("UYVY")) {
            for (uint32_t x = 0; x + 1 < w; x += 2) {
                source_rgb(k, e, x, y, px);
                source_rgb(k, e, x + 1, y, px2);
                rgb_to_yuv(px, &y0, &u0, &v0);
                rgb_to_yuv(px2, &y1, &u1, &v1);
                uint8_t *q = row + 2 * x;
                uint8_t u = clamp8((u0 + u1 + 1) / 2), v = clamp8((v0 + v1 + 1) / 2);
                if (f == fourcc_of("YUYV"))
                    q[0] = clamp8(y0), q[1] = u, q[2] = clamp8(y1), q[3] = v;
                else
                    q[0] = u, q[1] = clamp8(y0), q[2] = v, q[3] = clamp8(y1);
            }
        } else { /* NV12, YU12: luma here, chroma below */
            for (uint32_t x = 0; x < w; x++) {
                source_rgb(k, e, x, y, px);
                rgb_to_yuv(px, &y0, &u0, &v0);
                row[x] = clamp8(y0);
            }
        }
    }
    if (f == fourcc_of("NV12") || f == fourcc_of("YU12")) {
        uint8_t *chroma = dst + (uint64_t)bpl * h;
        uint32_t cbpl = f == fourcc_of("NV12") ? bpl : bpl / 2;
        uint8_t *vplane = chroma + (uint64_t)cbpl * (h / 2);
        for (uint32_t cy = 0; cy < h / 2; cy++)
            for (uint32_t cx = 0; cx < w / 2; cx++) {
                int su = 0, sv = 0;
                for (int d = 0; d < 4; d++) {
                    source_rgb(k, e, 2 * cx + (d & 1), 2 * cy + (d >> 1), px);
                    rgb_to_yuv(px, &y0, &u0, &v0);
                    su += u0, sv += v0;
                }
                uint8_t u = clamp8((su + 2) / 4), v = clamp8((sv + 2) / 4);
                if (f == fourcc_of("NV12")) {
                    chroma[(uint64_t)cy * cbpl + 2 * cx] = u;
                    chroma[(uint64_t)cy * cbpl + 2 * cx + 1] = v;
                } else {
                    chroma[(uint64_t)cy * cbpl + cx] = u;
                    vplane[(uint64_t)cy * cbpl + cx] = v;
                }
            }
    }
    return e->sizeimage;
}

