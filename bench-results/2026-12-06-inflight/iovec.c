// sendmsg with K tiny iovecs against send of one contiguous buffer of the same
// bytes, on a loopback TCP pair. Sender pinned to core 0, a reader on core 1
// drains. Reports the sender thread's CPU (user, sys) per call and per frame.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s); }
static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }
static volatile int stop;
static void *reader(void *arg) {
    int fd = *(int *)arg; char buf[1 << 16]; pin(1);
    while (!stop) { if (recv(fd, buf, sizeof buf, 0) <= 0) break; }
    return NULL;
}
int main(int argc, char **argv) {
    int frames = argc > 1 ? atoi(argv[1]) : 64;      // frames per call
    int frame = argc > 2 ? atoi(argv[2]) : 66;       // bytes per frame
    int calls = argc > 3 ? atoi(argv[3]) : 200000;
    int gather = argc > 4 ? atoi(argv[4]) : 1;       // 1: one iovec per frame; 0: one contiguous buffer (copied each call)
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(l, (void *)&a, sizeof a); socklen_t al = sizeof a; getsockname(l, (void *)&a, &al); listen(l, 1);
    int c = socket(AF_INET, SOCK_STREAM, 0); connect(c, (void *)&a, sizeof a);
    int s = accept(l, NULL, NULL);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t; pthread_create(&t, NULL, reader, &s);
    pin(0);
    char *frames_mem = malloc((size_t)frames * 4096); // each frame in its own allocation-like slot
    for (int i = 0; i < frames; i++) memset(frames_mem + (size_t)i * 4096, 'a' + i % 26, frame);
    struct iovec *iov = calloc(frames, sizeof *iov);
    char *contig = malloc((size_t)frames * frame);
    long long sent = 0;
    struct rusage r0, r1; struct timespec w0, w1;
    getrusage(RUSAGE_THREAD, &r0); clock_gettime(CLOCK_MONOTONIC, &w0);
    for (int k = 0; k < calls; k++) {
        ssize_t n;
        if (gather) {
            for (int i = 0; i < frames; i++) { iov[i].iov_base = frames_mem + (size_t)i * 4096; iov[i].iov_len = frame; }
            struct msghdr m = {.msg_iov = iov, .msg_iovlen = frames};
            n = sendmsg(c, &m, 0);
        } else {
            for (int i = 0; i < frames; i++) memcpy(contig + (size_t)i * frame, frames_mem + (size_t)i * 4096, frame);
            n = send(c, contig, (size_t)frames * frame, 0);
        }
        if (n < 0) { perror("send"); return 1; }
        sent += n;
    }
    getrusage(RUSAGE_THREAD, &r1); clock_gettime(CLOCK_MONOTONIC, &w1);
    double user = tv(r1.ru_utime) - tv(r0.ru_utime), sys = tv(r1.ru_stime) - tv(r0.ru_stime);
    double wall = (w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) / 1e9;
    printf("%s frames/call=%d frame=%dB calls=%d: user %.3f s sys %.3f s wall %.3f s | per call %.2f us (sys %.2f) | per frame %.1f ns (sys %.1f)\n",
           gather ? "sendmsg-iovec" : "send-contig  ", frames, frame, calls, user, sys, wall,
           (user + sys) / calls * 1e6, sys / calls * 1e6, (user + sys) / calls / frames * 1e9, sys / calls / frames * 1e9);
    stop = 1; shutdown(c, SHUT_RDWR); pthread_join(t, NULL);
    return 0;
}
