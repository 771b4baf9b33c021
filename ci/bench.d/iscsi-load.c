/* iscsi-load URL read|write QD SECS [BYTES] [digest]: keeps QD READ16/WRITE16 of
 * BYTES (default 4096) at random aligned offsets in flight for SECS seconds and
 * prints the completed commands per second. With ISCSI_LOAD_RUSAGE=FILE it also
 * writes its own CPU time (user and system seconds, whole run) to FILE. */
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct st {
  struct iscsi_context *is;
  int lun, write, stop, inflight;
  uint64_t units, done, failed, rng;
  uint32_t bs, len;
  unsigned char *data;
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void issue(struct st *s);

static void done(struct iscsi_context *is, int status, void *cmd, void *priv) {
  struct st *s = priv;
  (void)is;
  s->inflight--;
  if (status == SCSI_STATUS_GOOD) s->done++; else s->failed++;
  scsi_free_scsi_task(cmd);
  if (!s->stop) issue(s);
}

static void issue(struct st *s) {
  s->rng ^= s->rng << 13; s->rng ^= s->rng >> 7; s->rng ^= s->rng << 17;
  uint64_t lba = (s->rng % s->units) * (s->len / s->bs);
  struct scsi_task *t = s->write
      ? iscsi_write16_task(s->is, s->lun, lba, s->data, s->len, s->bs, 0, 0, 0, 0, 0, done, s)
      : iscsi_read16_task(s->is, s->lun, lba, s->len, s->bs, 0, 0, 0, 0, 0, done, s);
  if (!t) { fprintf(stderr, "iscsi-load: submit: %s\n", iscsi_get_error(s->is)); exit(1); }
  s->inflight++;
}

int main(int argc, char **argv) {
  if (argc < 5) { fprintf(stderr, "usage: iscsi-load URL read|write QD SECS [BYTES] [digest]\n"); return 2; }
  struct st s = {0};
  int qd = atoi(argv[3]);
  double secs = atof(argv[4]);
  s.len = argc > 5 ? (uint32_t)atoi(argv[5]) : 4096;
  s.write = strcmp(argv[2], "write") == 0;
  s.rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
  s.is = iscsi_create_context("iqn.2026-11.io.plexd:iscsi-load");
  struct iscsi_url *u = iscsi_parse_full_url(s.is, argv[1]);
  if (!u) { fprintf(stderr, "iscsi-load: %s\n", iscsi_get_error(s.is)); return 1; }
  iscsi_set_targetname(s.is, u->target);
  iscsi_set_session_type(s.is, ISCSI_SESSION_NORMAL);
  iscsi_set_header_digest(s.is, argc > 6 && strcmp(argv[6], "digest") == 0
                                    ? ISCSI_HEADER_DIGEST_CRC32C : ISCSI_HEADER_DIGEST_NONE);
  if (iscsi_full_connect_sync(s.is, u->portal, u->lun) != 0) {
    fprintf(stderr, "iscsi-load: login: %s\n", iscsi_get_error(s.is)); return 1;
  }
  s.lun = u->lun;
  struct scsi_task *t = iscsi_readcapacity16_sync(s.is, s.lun);
  struct scsi_readcapacity16 *rc = t ? scsi_datain_unmarshall(t) : NULL;
  if (!rc) { fprintf(stderr, "iscsi-load: READ CAPACITY(16) failed\n"); return 1; }
  s.bs = rc->block_length;
  if (s.len < s.bs || s.len % s.bs) { fprintf(stderr, "iscsi-load: bad size\n"); return 1; }
  s.units = (rc->returned_lba + 1) * s.bs / s.len;
  scsi_free_scsi_task(t);
  s.data = malloc(s.len);
  memset(s.data, 0xa5, s.len);
  for (int i = 0; i < qd; i++) issue(&s);
  double start = now(), end = start + secs;
  uint64_t counted = 0;
  double took = secs;
  while (!(s.stop && s.inflight == 0)) {
    if (!s.stop && now() >= end) { s.stop = 1; counted = s.done; took = now() - start; }
    struct pollfd p = {.fd = iscsi_get_fd(s.is), .events = iscsi_which_events(s.is)};
    if (poll(&p, 1, 100) < 0) continue;
    if (iscsi_service(s.is, p.revents) < 0) { fprintf(stderr, "iscsi-load: %s\n", iscsi_get_error(s.is)); return 1; }
  }
  if (s.failed) fprintf(stderr, "iscsi-load: %llu commands failed\n", (unsigned long long)s.failed);
  printf("%.0f\n", counted / took);
  iscsi_logout_sync(s.is);
  iscsi_destroy_context(s.is);
  const char *ru = getenv("ISCSI_LOAD_RUSAGE");
  struct rusage r;
  FILE *f;
  if (ru && getrusage(RUSAGE_SELF, &r) == 0 && (f = fopen(ru, "w"))) {
    fprintf(f, "%ld.%06ld %ld.%06ld\n", (long)r.ru_utime.tv_sec, (long)r.ru_utime.tv_usec,
            (long)r.ru_stime.tv_sec, (long)r.ru_stime.tv_usec);
    fclose(f);
  }
  return s.failed ? 1 : 0;
}
