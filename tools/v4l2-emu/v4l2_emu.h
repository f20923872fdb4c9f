/* v4l2_emu.h -- shared by v4l2_emu.c (the device: interception, ioctls, streaming) and
 * v4l2_emu_frames.c (the frame file, the offered formats and the pixel formats). Everything
 * here is hidden from the programs the library is preloaded into. */
#ifndef V4L2_EMU_H
#define V4L2_EMU_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_FORMATS 8
#define MAX_SIZES 8
#define MAX_BUFFERS 16
#define MAX_FDS 16

#define EMU_HIDDEN __attribute__((visibility("hidden")))

/* ---- configuration ---- */
struct size {
    uint32_t w, h;
};
struct format {
    uint32_t fourcc;
    int nsizes;
    struct size sizes[MAX_SIZES];
};

struct emu_config {
    char device[256];
    int nformats;
    struct format formats[MAX_FORMATS];
    uint32_t fps_milli; /* frames per 1000 s */
    uint32_t stride_pad;
    long stall_ms, stall_after_ms;
    long unplug_after_ms, replug_after_ms;
    int unplug_errno;
    long garbage_every, short_every;
    int no_monotonic;
    int log;
    /* frame file */
    uint32_t fw, fh, fch, nframes;
    uint8_t *pixels;       /* nframes * fw * fh * fch */
    uint8_t **jpeg;        /* per frame, may be NULL */
    uint32_t *jpeg_len;
    uint32_t jpeg_max;
    char frames_error[512];
};
EMU_HIDDEN extern struct emu_config cfg;

/* ---- device state ---- */
enum buf_state { BUF_USER, BUF_QUEUED, BUF_DONE };
struct buffer {
    enum buf_state state;
    uint32_t bytesused, flags, sequence;
    struct timeval timestamp;
};
struct emu_fd {
    int fd; /* the memfd handed to the program; -1 when the slot is free */
    int generation;
    uint32_t fourcc, width, height, bytesperline, sizeimage;
    uint32_t interval_num, interval_den; /* current frame interval (seconds = num / den) */
    uint32_t nbufs, buf_len;
    uint8_t *map; /* the shim's own mapping of all buffers */
    uint8_t **cache; /* per source frame: its rendering in the current format, made on first use */
    uint32_t *cache_len;
    struct buffer bufs[MAX_BUFFERS];
    uint32_t queue[MAX_BUFFERS], nqueued;   /* FIFO of queued buffer indices */
    uint32_t done[MAX_BUFFERS], ndone;      /* FIFO of filled buffer indices */
    int streaming, nonblocking;
    int64_t t0_ns;    /* STREAMON time, CLOCK_MONOTONIC */
    uint64_t next_k;  /* next frame index to produce */
    uint64_t rng;
};

/* v4l2_emu_frames.c */
EMU_HIDDEN uint32_t fourcc_of(const char *s);
EMU_HIDDEN void load_frames(const char *path);
EMU_HIDDEN void parse_formats(const char *spec);
EMU_HIDDEN void layout(uint32_t fourcc, uint32_t w, uint32_t h, uint32_t *bpl, uint32_t *size);
EMU_HIDDEN uint32_t render(struct emu_fd *e, uint64_t k, uint8_t *dst);

#endif
