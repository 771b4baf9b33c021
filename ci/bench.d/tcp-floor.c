/* tcp-floor: what the kernel's loopback TCP allows a 4 KiB NVMe/TCP-shaped
 * exchange, with no storage and no protocol work: the peer ci/bench.d/nvmf
 * measures NVMe/TCP against for what sockets alone cost.
 *
 *   tcp-floor serve PORT read|write [zerocopy]
 *                                     accepts one connection on 127.0.0.1:PORT and
 *                                     answers every request until the peer closes
 *                                     (zerocopy: sends with MSG_ZEROCOPY, reaping its
 *                                     notifications after every send; on loopback
 *                                     the kernel copies such data on delivery anyway)
 *   tcp-floor serve PORT read|write splice
 *                                     the same, the answers given to the socket
 *                                     without a copy (vmsplice into a pipe, splice
 *                                     to the socket; loopback does not copy spliced
 *                                     pages): what sending without the copy costs
 *   tcp-floor load PORT read|write QD SECS
 *                                     keeps QD requests in flight for SECS seconds
 *                                     and prints the completed requests per second
 *                                     and its CPU microseconds per request
 * (serve prints the requests it answered and its CPU microseconds per request)
 *
 * The bytes on the wire are those of NVMe/TCP without digests: a read is a 72-byte
 * command capsule answered by a 24-byte C2HData header, 4096 bytes of data and a
 * 24-byte response capsule; a write is a 72-byte capsule with 4096 bytes of data
 * answered by a 24-byte response capsule. Both sides batch as plexd-target and
 * plexperf --nvmf do: read what arrived (one blocking read), answer every whole
 * request in it with one vectored send (the data sent from one buffer, as the
 * target sends pool buffers), repeat. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CMD 72
#define DATA 4096
#define HDR 24
#define RESP 24
#define RBUF (1 << 20)
#define MAXQD 1024

static unsigned char data[DATA], hdr[HDR], resp[RESP], cmd[CMD];
/* A read's whole answer in one piece, for splice (two pipe buffers per answer
 * instead of three, the fewest the 4144 bytes can take). */
static unsigned char reply[HDR + DATA + RESP] __attribute__((aligned(4096)));

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* CPU seconds (user + system) this process used so far. */
static double cpu(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* Sends every iovec of iov[0..n] (blocking; continues after short sends). */
static int zerocopy, splicing, pipefd[2];

/* Drops the MSG_ZEROCOPY completion notifications queued on fd (the data sent
 * never changes, so nothing waits for them). */
static void reap_zerocopy(int fd) {
  char ctl[256];
  for (int i = 0; i < 1024; i++) {
    struct msghdr e = {.msg_control = ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(fd, &e, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) break;
  }
}

/* Gives iov[0..n] to the socket through the pipe without copying (the bytes
 * never change, so nothing waits for the socket to release the pages). */
static void splice_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    int k = n > 64 ? 64 : n;
    ssize_t in = vmsplice(pipefd[1], iov, k, 0), left;
    if (in < 0) die("tcp-floor: vmsplice");
    for (left = in; left > 0;) {
      ssize_t m = splice(pipefd[0], NULL, fd, NULL, left, SPLICE_F_MOVE | (k < n ? SPLICE_F_MORE : 0));
      if (m < 0) {
        if (errno == EINTR) continue;
        die("tcp-floor: splice");
      }
      left -= m;
    }
    while (n > 0 && (size_t)in >= iov->iov_len) { in -= iov->iov_len; iov++; n--; }
    if (n > 0) { iov->iov_base = (char *)iov->iov_base + in; iov->iov_len -= in; }
  }
}

static void send_all(int fd, struct iovec *iov, int n) {
  if (splicing) { splice_all(fd, iov, n); return; }
  while (n > 0) {
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = n > 1024 ? 1024 : n};
    ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL | (zerocopy ? MSG_ZEROCOPY : 0));
    if (zerocopy) reap_zerocopy(fd);
    if (k < 0) {
      if (errno == EINTR) continue;
      die("tcp-floor: send");
    }
    while (n > 0 && (size_t)k >= iov->iov_len) { k -= iov->iov_len; iov++; n--; }
    if (n > 0) { iov->iov_base = (char *)iov->iov_base + k; iov->iov_len -= k; }
  }
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int serve(int port, int write) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  if (l < 0) die("tcp-floor: socket");
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) die("tcp-floor: listen");
  int fd = accept(l, NULL, NULL);
  if (fd < 0) die("tcp-floor: accept");
  close(l);
  nodelay(fd);
  if (zerocopy && setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one)) die("tcp-floor: SO_ZEROCOPY");
  if (splicing && (pipe(pipefd) || fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20) < 0)) die("tcp-floor: pipe");
  size_t req = write ? CMD + DATA : CMD, have = 0;
  uint64_t served = 0;
  unsigned char *rb = malloc(RBUF);
  static struct iovec iov[3 * RBUF / CMD + 3];
  for (;;) {
    ssize_t n = read(fd, rb + have, RBUF - have);
    if (n == 0) {
      /* Requests answered and CPU microseconds per request. */
      printf("%llu %.2f\n", (unsigned long long)served, served ? cpu() * 1e6 / served : 0.0);
      return 0;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      die("tcp-floor: read");
    }
    have += n;
    size_t whole = have / req;
    int k = 0;
    for (size_t i = 0; i < whole; i++) {
      if (write) {
        iov[k++] = (struct iovec){resp, RESP};
      } else if (splicing) {
        iov[k++] = (struct iovec){reply, sizeof reply};
      } else {
        iov[k++] = (struct iovec){hdr, HDR};
        iov[k++] = (struct iovec){data, DATA};
        iov[k++] = (struct iovec){resp, RESP};
      }
    }
    memmove(rb, rb + whole * req, have - whole * req);
    have -= whole * req;
    served += whole;
    send_all(fd, iov, k);
  }
}

static int load(int port, int write, int qd, double secs) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; connect(fd, (void *)&a, sizeof a); i++) {
    if (i == 100) die("tcp-floor: connect");
    usleep(10000);
  }
  nodelay(fd);
  size_t rep = write ? RESP : HDR + DATA + RESP, have = 0;
  unsigned char *rb = malloc(RBUF);
  static struct iovec iov[2 * MAXQD];
  int k = 0, inflight = 0;
  for (int i = 0; i < qd; i++) {
    iov[k++] = (struct iovec){cmd, CMD};
    if (write) iov[k++] = (struct iovec){data, DATA};
  }
  inflight = qd;
  send_all(fd, iov, k);
  uint64_t done = 0;
  double t0 = now(), end = t0 + secs;
  int stopping = 0;
  while (inflight > 0) {
    ssize_t n = read(fd, rb + have, RBUF - have);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      die("tcp-floor: read");
    }
    have += n;
    size_t whole = have / rep;
    memmove(rb, rb + whole * rep, have - whole * rep);
    have -= whole * rep;
    inflight -= whole;
    done += whole;
    if (!stopping && now() >= end) stopping = 1;
    if (stopping) continue;
    k = 0;
    for (size_t i = 0; i < whole; i++) {
      iov[k++] = (struct iovec){cmd, CMD};
      if (write) iov[k++] = (struct iovec){data, DATA};
    }
    inflight += whole;
    send_all(fd, iov, k);
  }
  double el = now() - t0;
  /* Requests per second and CPU microseconds per request. */
  printf("%.0f %.2f\n", done / el, done ? cpu() * 1e6 / done : 0.0);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  memset(data, 0xa5, sizeof data);
  if ((argc == 4 || (argc == 5 && (!strcmp(argv[4], "zerocopy") || !strcmp(argv[4], "splice")))) &&
      !strcmp(argv[1], "serve")) {
    zerocopy = argc == 5 && !strcmp(argv[4], "zerocopy");
    splicing = argc == 5 && !strcmp(argv[4], "splice");
    return serve(atoi(argv[2]), !strcmp(argv[3], "write"));
  }
  if (argc == 6 && !strcmp(argv[1], "load")) {
    int qd = atoi(argv[4]);
    if (qd < 1 || qd > MAXQD) { fprintf(stderr, "tcp-floor: QD 1..%d\n", MAXQD); return 2; }
    return load(atoi(argv[2]), !strcmp(argv[3], "write"), qd, atof(argv[5]));
  }
  fprintf(stderr, "usage: tcp-floor serve PORT read|write [zerocopy|splice] | tcp-floor load PORT read|write QD SECS\n");
  return 2;
}
