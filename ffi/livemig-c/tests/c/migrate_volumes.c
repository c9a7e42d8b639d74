/*
 * A C control plane in miniature, against the real cluster: an in-memory
 * catalog supplied through livemig_catalog_callbacks, three migrations
 * (one that succeeds, one whose switch the catalog refuses, one whose
 * switch fails once and is resumed), and misuse of the ABI that must give
 * error codes, not crashes. Run by tests/c_program.rs (under valgrind).
 *
 * usage: migrate_volumes CEPH_CONF JOBS_POOL SRC_POOL DST_POOL IMG_OK IMG_REFUSED IMG_RETRIED
 * Prints "RESULT <name> <value>" lines for the harness; exits 0 when every
 * check here held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "livemig.h"

#define MAX_VOLUMES 8
#define S 128

struct volume {
    int used;
    char id[S];
    uint64_t size;
    int32_t status;
    int has_migration;
    char migration[S];
    char cluster[S], pool[S], ns[S], image[S];
    char location[S];
};

struct catalog {
    struct volume volumes[MAX_VOLUMES];
    char refuse_switch_of[S]; /* a volume whose switch the control plane refuses */
    char fail_switch_once[S]; /* a volume whose next switch fails with an I/O error */
    int changes;              /* committed compare-and-swaps */
    int switches_seen;
};

static int failures;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            failures++;                                   \
            fprintf(stderr, "CHECK FAILED line %d: ", __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fprintf(stderr, "\n");                        \
        }                                                 \
    } while (0)

static const char *or_empty(const char *s) { return s ? s : ""; }

static void copy_str(char *dst, const char *src) {
    snprintf(dst, S, "%s", or_empty(src));
}

static struct volume *find(struct catalog *c, const char *id) {
    for (int i = 0; i < MAX_VOLUMES; i++)
        if (c->volumes[i].used && strcmp(c->volumes[i].id, id) == 0)
            return &c->volumes[i];
    return NULL;
}

static void to_record(const struct volume *v, livemig_volume *out) {
    out->id = v->id;
    out->size = v->size;
    out->status = v->status;
    out->migration = v->has_migration ? v->migration : NULL;
    out->backing.cluster = v->cluster;
    out->backing.pool = v->pool;
    out->backing.pool_namespace = v->ns;
    out->backing.image = v->image;
    out->location = v->location;
}

static void from_record(struct volume *v, const livemig_volume *r) {
    v->used = 1;
    copy_str(v->id, r->id);
    v->size = r->size;
    v->status = r->status;
    v->has_migration = r->migration != NULL;
    copy_str(v->migration, r->migration);
    copy_str(v->cluster, r->backing.cluster);
    copy_str(v->pool, r->backing.pool);
    copy_str(v->ns, r->backing.pool_namespace);
    copy_str(v->image, r->backing.image);
    copy_str(v->location, r->location);
}

static int same(const struct volume *v, const livemig_volume *r) {
    return strcmp(v->id, or_empty(r->id)) == 0 && v->size == r->size && v->status == r->status &&
           v->has_migration == (r->migration != NULL) &&
           (!v->has_migration || strcmp(v->migration, r->migration) == 0) &&
           strcmp(v->cluster, or_empty(r->backing.cluster)) == 0 &&
           strcmp(v->pool, or_empty(r->backing.pool)) == 0 &&
           strcmp(v->ns, or_empty(r->backing.pool_namespace)) == 0 &&
           strcmp(v->image, or_empty(r->backing.image)) == 0 &&
           strcmp(v->location, or_empty(r->location)) == 0;
}

static int32_t get_volume(void *user_data, const char *id, livemig_records *out) {
    struct volume *v = find(user_data, id);
    if (!v) {
        livemig_callback_error("no such volume in the C catalog");
        return LIVEMIG_ERR_NOT_IN_CATALOG;
    }
    livemig_volume r;
    to_record(v, &r);
    return livemig_records_add_volume(out, &r);
}

static int32_t list_volumes(void *user_data, livemig_records *out) {
    struct catalog *c = user_data;
    for (int i = 0; i < MAX_VOLUMES; i++) {
        if (!c->volumes[i].used)
            continue;
        livemig_volume r;
        to_record(&c->volumes[i], &r);
        int32_t rc = livemig_records_add_volume(out, &r);
        if (rc != LIVEMIG_OK)
            return rc;
    }
    return LIVEMIG_OK;
}

static int32_t list_attachments(void *user_data, const char *volume_id, livemig_records *out) {
    (void)user_data, (void)volume_id, (void)out;
    return LIVEMIG_OK; /* this control plane's volumes are all detached */
}

static int32_t compare_and_swap(void *user_data, const livemig_change *ch) {
    struct catalog *c = user_data;
    /* Expectations first: nothing changes unless all hold. */
    for (size_t i = 0; i < ch->expect_volumes_count; i++) {
        struct volume *v = find(c, ch->expect_volumes[i].id);
        if (!v || !same(v, &ch->expect_volumes[i])) {
            livemig_callback_error("a volume differs from what livemig expected");
            return LIVEMIG_ERR_CONFLICT;
        }
    }
    for (size_t i = 0; i < ch->expect_no_volumes_count; i++)
        if (find(c, ch->expect_no_volumes[i]))
            return LIVEMIG_ERR_CONFLICT;
    for (size_t i = 0; i < ch->expect_attachments_count; i++)
        if (ch->expect_attachments[i].count != 0)
            return LIVEMIG_ERR_CONFLICT;
    if (ch->put_attachments_count || ch->remove_attachments_count || ch->put_instances_count) {
        livemig_callback_error("this catalog has no attachments or instances");
        return LIVEMIG_ERR_INVALID_INPUT;
    }
    /* The control plane's own rules for the commit point. */
    if (ch->purpose == LIVEMIG_CHANGE_SWITCH) {
        c->switches_seen++;
        for (size_t i = 0; i < ch->put_volumes_count; i++) {
            if (strcmp(ch->put_volumes[i].id, c->refuse_switch_of) == 0) {
                livemig_callback_error("switches of this volume are frozen by the operator");
                return LIVEMIG_ERR_CONFLICT;
            }
            if (strcmp(ch->put_volumes[i].id, c->fail_switch_once) == 0) {
                c->fail_switch_once[0] = '\0';
                livemig_callback_error("the database connection was lost");
                return LIVEMIG_ERR_IO;
            }
        }
    }
    for (size_t i = 0; i < ch->put_volumes_count; i++) {
        struct volume *v = find(c, ch->put_volumes[i].id);
        for (int j = 0; !v && j < MAX_VOLUMES; j++)
            if (!c->volumes[j].used)
                v = &c->volumes[j];
        if (!v)
            return LIVEMIG_ERR_NO_SPACE;
        from_record(v, &ch->put_volumes[i]);
    }
    for (size_t i = 0; i < ch->remove_volumes_count; i++) {
        struct volume *v = find(c, ch->remove_volumes[i]);
        if (v)
            v->used = 0;
    }
    c->changes++;
    return LIVEMIG_OK;
}

static void add_volume(struct catalog *c, const char *id, const char *pool, const char *image, uint64_t size) {
    for (int i = 0; i < MAX_VOLUMES; i++) {
        struct volume *v = &c->volumes[i];
        if (v->used)
            continue;
        memset(v, 0, sizeof *v);
        v->used = 1;
        copy_str(v->id, id);
        v->size = size;
        v->status = LIVEMIG_VOLUME_AVAILABLE;
        copy_str(v->cluster, "local");
        copy_str(v->pool, pool);
        copy_str(v->image, image);
        copy_str(v->location, "backend-a");
        return;
    }
}

/* Starts a migration of `volume` and waits for it; returns the wait code. */
static int32_t migrate(livemig_migrator *m, const char *volume, const char *dst, char **job) {
    livemig_run_options opts;
    memset(&opts, 0, sizeof opts);
    opts.struct_size = sizeof opts;
    opts.keep_source = 1; /* the harness compares source and destination */
    int32_t rc = livemig_start(m, volume, dst, &opts, job);
    if (rc != LIVEMIG_OK) {
        fprintf(stderr, "start %s: %s: %s\n", volume, livemig_code_name(rc), livemig_last_error_message());
        return rc;
    }
    livemig_progress p;
    rc = livemig_get_progress(m, *job, &p);
    CHECK(rc == LIVEMIG_OK, "progress: %s", livemig_last_error_message());
    rc = livemig_wait(m, *job, -1);
    printf("RESULT wait-%s %s\n", volume, livemig_code_name(rc));
    if (rc != LIVEMIG_OK)
        printf("RESULT message-%s %s\n", volume, livemig_last_error_message());
    return rc;
}

static void misuse_without_cluster(void) {
    CHECK(livemig_migrator_free(NULL) == LIVEMIG_ERR_BAD_HANDLE, "free(NULL)");
    CHECK(livemig_wait((livemig_migrator *)0x1234, "x", 0) == LIVEMIG_ERR_BAD_HANDLE, "forged handle");
    CHECK(strlen(livemig_last_error_message()) > 0, "a message after an error");
    char not_ours[8] = "abc";
    CHECK(livemig_string_free(not_ours) == LIVEMIG_ERR_BAD_HANDLE, "free of a foreign string");
    CHECK(livemig_string_free(NULL) == LIVEMIG_OK, "free(NULL string)");
    livemig_migrator *m = NULL;
    CHECK(livemig_connect(NULL, NULL, NULL, &m) == LIVEMIG_ERR_NULL_ARGUMENT, "NULL config");
    livemig_config bad = {.conf_path = "/nonexistent/ceph.conf"};
    int32_t rc = livemig_connect(&bad, NULL, NULL, &m);
    CHECK(rc == LIVEMIG_ERR_CONFIG, "missing conf gives config, got %s", livemig_code_name(rc));
    livemig_catalog_callbacks incomplete = {0};
    CHECK(livemig_connect(&bad, &incomplete, NULL, &m) == LIVEMIG_ERR_NULL_ARGUMENT, "callbacks missing");
    CHECK(livemig_records_add_volume(NULL, NULL) == LIVEMIG_ERR_BAD_HANDLE, "records outside a callback");
    printf("RESULT misuse checked\n");
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s CEPH_CONF JOBS_POOL SRC_POOL DST_POOL IMG_OK IMG_REFUSED IMG_RETRIED\n", argv[0]);
        return 2;
    }
    const char *conf = argv[1], *jobs = argv[2], *src = argv[3], *dst = argv[4];
    printf("RESULT version %s\n", livemig_version());
    misuse_without_cluster();

    struct catalog *cat = calloc(1, sizeof *cat);
    add_volume(cat, "vol-ok", src, argv[5], 8 << 20);
    add_volume(cat, "vol-refused", src, argv[6], 8 << 20);
    add_volume(cat, "vol-retried", src, argv[7], 8 << 20);
    copy_str(cat->refuse_switch_of, "vol-refused");
    copy_str(cat->fail_switch_once, "vol-retried");

    livemig_catalog_callbacks callbacks = {
        .user_data = cat,
        .get_volume = get_volume,
        .list_volumes = list_volumes,
        .list_attachments = list_attachments,
        .compare_and_swap = compare_and_swap,
    };
    livemig_config cfg = {.conf_path = conf, .jobs_pool = jobs, .connect_timeout_secs = 30};
    livemig_migrator *m = NULL;
    int32_t rc = livemig_connect(&cfg, &callbacks, NULL, &m);
    if (rc != LIVEMIG_OK) {
        fprintf(stderr, "connect: %s\n", livemig_last_error_message());
        return 1;
    }

    /* Bad input changes nothing. */
    char *report = NULL;
    rc = livemig_precheck(m, "vol-missing", dst, &report);
    CHECK(rc == LIVEMIG_ERR_NOT_IN_CATALOG, "unknown volume: %s", livemig_code_name(rc));
    livemig_string_free(report);
    report = NULL;
    rc = livemig_precheck(m, "vol-ok", "no-such-pool", &report);
    CHECK(rc == LIVEMIG_ERR_POOL_NOT_FOUND, "unknown pool: %s", livemig_code_name(rc));
    CHECK(report != NULL && strstr(report, "\"rules\"") != NULL, "a report comes with the failed precheck");
    livemig_string_free(report);
    /* Options without struct_size, or with an unknown engine, are refused. */
    livemig_run_options unsized_opts;
    memset(&unsized_opts, 0, sizeof unsized_opts);
    char *no_job = NULL;
    rc = livemig_start(m, "vol-ok", dst, &unsized_opts, &no_job);
    CHECK(rc == LIVEMIG_ERR_INVALID_INPUT && strstr(livemig_last_error_message(), "struct_size") != NULL,
          "options without struct_size: %s", livemig_code_name(rc));
    unsized_opts.struct_size = sizeof unsized_opts;
    unsized_opts.engine = 7;
    rc = livemig_start(m, "vol-ok", dst, &unsized_opts, &no_job);
    CHECK(rc == LIVEMIG_ERR_INVALID_INPUT, "unknown engine: %s", livemig_code_name(rc));
    unsized_opts.engine = LIVEMIG_ENGINE_AUTO;
    unsized_opts.delta_op_priority = 256;
    rc = livemig_start(m, "vol-ok", dst, &unsized_opts, &no_job);
    CHECK(rc == LIVEMIG_ERR_INVALID_INPUT && strstr(livemig_last_error_message(), "delta_op_priority") != NULL,
          "a delta priority out of range: %s", livemig_code_name(rc));
    unsized_opts.delta_op_priority = 0;
    /* The QEMU engine moves only volumes a QEMU has open. */
    unsized_opts.engine = LIVEMIG_ENGINE_QEMU;
    rc = livemig_start(m, "vol-ok", dst, &unsized_opts, &no_job);
    CHECK(rc == LIVEMIG_ERR_INVALID_INPUT && strstr(livemig_last_error_message(), "not attached") != NULL,
          "the QEMU engine for a detached volume: %s", livemig_code_name(rc));
    CHECK(no_job == NULL, "a refused start gave a job id");
    CHECK(cat->changes == 0, "prechecks changed the catalog");

    /* 1. A migration that succeeds. */
    char *job = NULL;
    rc = migrate(m, "vol-ok", dst, &job);
    CHECK(rc == LIVEMIG_OK, "vol-ok migrated");
    struct volume *v = find(cat, "vol-ok");
    CHECK(v && strcmp(v->pool, dst) == 0, "catalog names the destination pool");
    CHECK(v && !v->has_migration && v->status == LIVEMIG_VOLUME_AVAILABLE, "volume released");
    char *status = NULL;
    CHECK(livemig_status(m, job, &status) == LIVEMIG_OK && strstr(status, "\"done\""), "status says done");
    CHECK(livemig_string_free(status) == LIVEMIG_OK, "free status");
    CHECK(livemig_string_free(status) == LIVEMIG_ERR_BAD_HANDLE, "double free of a string is detected");
    rc = livemig_resume(m, job, NULL);
    if (rc == LIVEMIG_OK)
        rc = livemig_wait(m, job, -1);
    CHECK(rc == LIVEMIG_ERR_JOB_FINISHED || rc == LIVEMIG_OK, "resuming a finished job: %s", livemig_code_name(rc));
    livemig_string_free(job);

    /* 2. The control plane refuses the switch: the job rolls back. */
    rc = migrate(m, "vol-refused", dst, &job);
    CHECK(rc == LIVEMIG_ERR_ROLLED_BACK, "refused switch rolls back, got %s", livemig_code_name(rc));
    CHECK(strstr(livemig_last_error_message(), "frozen by the operator") != NULL, "the reason is reported");
    v = find(cat, "vol-refused");
    CHECK(v && strcmp(v->pool, src) == 0 && !v->has_migration && v->status == LIVEMIG_VOLUME_AVAILABLE,
          "the volume is as before");
    livemig_progress p;
    CHECK(livemig_get_progress(m, job, &p) == LIVEMIG_OK && strcmp(p.phase, "aborted") == 0 && !p.running,
          "progress says aborted (%s)", p.phase);
    livemig_string_free(job);

    /* 3. The switch fails once (not a refusal): the job stops, resumable; resumed, it finishes. */
    rc = migrate(m, "vol-retried", dst, &job);
    CHECK(rc == LIVEMIG_ERR_IO, "failed switch stops the job, got %s", livemig_code_name(rc));
    CHECK(strstr(livemig_last_error_message(), "database connection was lost") != NULL, "the callback's message");
    v = find(cat, "vol-retried");
    CHECK(v && strcmp(v->pool, src) == 0 && v->has_migration, "still on the source, held by the job");
    CHECK(livemig_resume(m, job, NULL) == LIVEMIG_OK, "resume: %s", livemig_last_error_message());
    rc = livemig_wait(m, job, -1);
    printf("RESULT wait-vol-retried-resumed %s\n", livemig_code_name(rc));
    CHECK(rc == LIVEMIG_OK, "resumed job finishes: %s", livemig_last_error_message());
    v = find(cat, "vol-retried");
    CHECK(v && strcmp(v->pool, dst) == 0 && !v->has_migration, "retried volume moved");
    livemig_string_free(job);

    /* Freed handles are detected. */
    CHECK(livemig_migrator_free(m) == LIVEMIG_OK, "free");
    CHECK(livemig_migrator_free(m) == LIVEMIG_ERR_BAD_HANDLE, "double free is detected");
    CHECK(livemig_get_progress(m, "x", &p) == LIVEMIG_ERR_BAD_HANDLE, "use after free is detected");
    printf("RESULT switches %d\n", cat->switches_seen);
    free(cat);
    printf("RESULT failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
