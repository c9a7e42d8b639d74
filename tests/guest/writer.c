/*
 * The test guest's init: a real guest that writes to its virtio disk while
 * livemig moves the volume under it.
 *
 * It runs as PID 1 of a minimal initramfs under qemu-system-x86_64 (Debian's
 * cloud kernel). It loads the virtio modules shipped next to it, opens
 * /dev/vda with O_DIRECT|O_DSYNC and writes 4 KiB blocks one at a time, at a
 * set rate: write number SEQ goes to block (SEQ * 7919) % BLOCKS and holds a
 * pattern that SEQ and the block number determine. After each write the
 * device acknowledged it prints `A SEQ BLOCK` on the console (the host
 * saves the serial port to a file), so the host knows exactly which writes
 * were acknowledged and can check that every one of them is on the image
 * the volume ends on. A failed write prints `E SEQ BLOCK ERRNO` and the
 * writer carries on.
 *
 * Settings come from the kernel command line (the kernel passes `name=value`
 * words it does not know to init's environment):
 *   lmw_rate    writes per second (default 100)
 *   lmw_blocks  blocks the writes cycle over (default 4096, 16 MiB)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define STRIDE 7919

/* Word I of the block written by write SEQ to block NR. The host computes
 * the same function (tests/common/guest.rs). */
static uint64_t pattern_word(uint64_t seq, uint64_t nr, uint64_t i)
{
    uint64_t z = seq * 0x9E3779B97F4A7C15ull ^ nr * 0xC2B2AE3D27D4EB4Full ^ (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t setting(const char *name, uint64_t fallback)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : fallback;
}

static void load_modules(void)
{
    static const char *const modules[] = {
        "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
    };
    for (size_t m = 0; m < sizeof modules / sizeof modules[0]; m++) {
        char path[128];
        snprintf(path, sizeof path, "/modules/%s.ko", modules[m]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
            printf("LMW module %s: %s\n", modules[m], strerror(errno));
        if (fd >= 0)
            close(fd);
    }
}

static void sleep_until(struct timespec *t, uint64_t step_ns)
{
    t->tv_nsec += (long)step_ns;
    while (t->tv_nsec >= 1000000000L) {
        t->tv_nsec -= 1000000000L;
        t->tv_sec++;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR)
        ;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    load_modules();
    for (int i = 0; i < 200 && access("/dev/vda", F_OK) != 0; i++)
        usleep(50000);

    uint64_t rate = setting("lmw_rate", 100);
    uint64_t blocks = setting("lmw_blocks", 4096);
    int fd = open("/dev/vda", O_RDWR | O_DIRECT | O_DSYNC);
    if (fd < 0 || rate == 0 || blocks == 0 || blocks % STRIDE == 0) {
        printf("LMW fatal: cannot write /dev/vda: %s\n", fd < 0 ? strerror(errno) : "bad settings");
        for (;;)
            pause();
    }
    uint64_t *buf = aligned_alloc(BLOCK, BLOCK);
    printf("LMW ready rate=%llu blocks=%llu\n", (unsigned long long)rate, (unsigned long long)blocks);

    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t seq = 1;; seq++) {
        uint64_t nr = seq * STRIDE % blocks;
        for (uint64_t i = 0; i < BLOCK / 8; i++)
            buf[i] = pattern_word(seq, nr, i);
        ssize_t n = pwrite(fd, buf, BLOCK, (off_t)(nr * BLOCK));
        if (n == BLOCK)
            printf("A %llu %llu\n", (unsigned long long)seq, (unsigned long long)nr);
        else
            printf("E %llu %llu %d\n", (unsigned long long)seq, (unsigned long long)nr, n < 0 ? errno : 0);
        sleep_until(&next, 1000000000ull / rate);
    }
}
