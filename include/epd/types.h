/* epd/types.h — the types every part of epd shares: status codes, enums and the
 * group spec, as a plain C ABI.
 *
 * These values are part of the wire protocol and the client ABI: numbers are
 * never reused or renumbered; new values are appended. The structs that callers
 * fill carry `struct_size` (set it to sizeof) so they can grow without breaking
 * old binaries.
 *
 * Thread-safety: everything here is plain data or a pure function.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define EPD_API __attribute__((visibility("default")))
#else
#define EPD_API
#endif

/* Marks a name kept for one minor version after its replacement. Define
 * EPD_NO_DEPRECATION_WARNINGS before including this header to silence it. */
#ifndef EPD_DEPRECATED
#if defined(EPD_NO_DEPRECATION_WARNINGS)
#define EPD_DEPRECATED(msg)
#elif defined(__GNUC__) || defined(__clang__)
#define EPD_DEPRECATED(msg) __attribute__((deprecated(msg)))
#elif defined(__cplusplus) && __cplusplus >= 201402L
#define EPD_DEPRECATED(msg) [[deprecated(msg)]]
#elif defined(_MSC_VER)
#define EPD_DEPRECATED(msg) __declspec(deprecated(msg))
#else
#define EPD_DEPRECATED(msg)
#endif
#endif

/* One status enum for the whole project. OK is 0, errors are negative. */
typedef enum epd_status {
  EPD_OK = 0,
  EPD_ERR_INVALID_ARGUMENT = -1,     /* a call argument is invalid (message names it) */
  EPD_ERR_INVALID_SPEC = -2,         /* a group spec field is invalid */
  EPD_ERR_EXPERT_ID_OUT_OF_RANGE = -3, /* topk_ids outside [-1, num_experts) */
  EPD_ERR_CAPACITY_EXCEEDED = -4,    /* n_tokens above max_tokens_per_rank */
  EPD_ERR_FP8_ALIGNMENT = -5,        /* fp8 block quantisation needs hidden % 128 == 0 */
  EPD_ERR_UNSUPPORTED = -6,          /* valid but not supported by this build/executor */
  EPD_ERR_BAD_SLOT = -7,             /* slot outside [0, slots) */
  EPD_ERR_NO_DISPATCH = -8,          /* combine/wait on a slot without a dispatch */
  EPD_ERR_SPEC_MISMATCH = -9,        /* join spec differs from the group's */
  EPD_ERR_DUPLICATE_RANK = -10,      /* rank already joined */
  EPD_ERR_STALE_GENERATION = -11,    /* generation older than the group's */
  EPD_ERR_UNKNOWN_GROUP = -12,       /* no such group */
  EPD_ERR_VERSION_MISMATCH = -13,    /* protocol major version differs */
  EPD_ERR_PROTOCOL = -14,            /* malformed or truncated message */
  EPD_ERR_TIMEOUT = -15,             /* a deadline passed */
  EPD_ERR_PEER_LOST = -16,           /* a rank of the group is gone */
  EPD_ERR_DAEMON_LOST = -17,         /* the daemon connection is gone */
  EPD_ERR_PERMISSION = -18,          /* credentials or join token refused */
  EPD_ERR_NO_MEMORY = -19,           /* allocation failed */
  EPD_ERR_SYSTEM = -20,              /* a system call failed (message names it) */
  EPD_ERR_CUDA = -21,                /* a CUDA call failed (message names it) */
  EPD_ERR_GPU_UNAVAILABLE = -22,     /* no usable CUDA driver or device */
  EPD_ERR_SLOT_BUSY = -23,           /* slot still has an operation in flight */
  EPD_ERR_SHUTTING_DOWN = -24,       /* the daemon is stopping */
  EPD_ERR_NOT_JOINED = -25,          /* handle has no group */
  EPD_ERR_BAD_WEIGHT_MODE = -26,     /* combine weight mode invalid for the layout */
  EPD_ERR_RDMA = -27,                /* a verbs / rdma_cm call failed */
  EPD_ERR_INTERNAL = -28,            /* an internal invariant broke (a bug) */
  EPD_ERR_DEVICE_FAULT = -29,        /* a kernel set the fault word */
  EPD_ERR_GROUP_CLOSED = -30,        /* the group was torn down */
  EPD_ERR_NOT_OWNER = -31,           /* the group belongs to another uid (message names group and uid) */
  EPD_ERR_QUOTA_EXCEEDED = -32,      /* a [limits] quota would be exceeded (message names it, uid, numbers) */
} epd_status_t;

/* A static, human-readable name for a status ("EPD_ERR_PEER_LOST: ..."). Never NULL. */
EPD_API const char* epd_status_string(epd_status_t status);

typedef enum epd_dtype {
  EPD_DTYPE_BF16 = 0,
  EPD_DTYPE_FP16 = 1,
  EPD_DTYPE_FP32 = 2,
} epd_dtype_t;

typedef enum epd_quant {
  EPD_QUANT_NONE = 0,
  EPD_QUANT_FP8_E4M3_BLOCK128 = 1, /* one fp32 scale (amax / 448) per 128 elements */
} epd_quant_t;

typedef enum epd_mode {
  EPD_MODE_HIGH_THROUGHPUT = 0,
  EPD_MODE_LOW_LATENCY = 1,
} epd_mode_t;

/* Who launches a GPU group's kernels (spec.executor). */
typedef enum epd_executor {
  EPD_EXECUTOR_DAEMON = 0, /* the daemon, on streams armed ahead of each call: the worker's stream
                              rings a doorbell and waits for the completion word (the default) */
  EPD_EXECUTOR_INLINE = 1, /* the worker's own stream launches the daemon's kernels on the
                              daemon-owned workspaces (libepd-inline, loaded by libepd-client);
                              the daemon keeps memory, topology, deadlines and aborts. Every rank
                              on one GPU of one node; each rank's calls on its own stream; several
                              worker processes on one GPU need MPS (README, "Executors") */
} epd_executor_t;

typedef enum epd_layout {
  EPD_LAYOUT_RANK_MAJOR = 0,   /* one row per (token, destination rank) */
  EPD_LAYOUT_EXPERT_MAJOR = 1, /* [local_experts][world_size * max_tokens] rows */
} epd_layout_t;

typedef enum epd_id_dtype {
  EPD_ID_INT32 = 0,
  EPD_ID_INT64 = 1,
} epd_id_dtype_t;

typedef enum epd_weight_mode {
  EPD_WEIGHTS_APPLY = 0,           /* expert_major: multiply by the dispatch-time weight */
  EPD_WEIGHTS_ALREADY_APPLIED = 1, /* expert outputs already weighted: plain sum */
  EPD_WEIGHTS_ONES = 2,            /* router weight was applied on input: plain sum */
} epd_weight_mode_t;

/* Placement of one rank. gpu == EPD_GPU_HOST runs on the host executor. */
#define EPD_GPU_HOST (-1)
typedef struct epd_placement {
  int32_t node; /* node index (0 on a single node) */
  int32_t gpu;  /* local CUDA device ordinal, or EPD_GPU_HOST */
} epd_placement_t;

/* The documented maxima of the group spec. epd_group_spec_validate (and every
 * join) refuses a value outside them with EPD_ERR_INVALID_SPEC naming the
 * field and the value. */
#define EPD_NAME_MAX 64
#define EPD_MAX_WORLD_SIZE 1024
#define EPD_MAX_EXPERTS 65536
#define EPD_MAX_TOP_K 64
#define EPD_MAX_SLOTS 8
#define EPD_MAX_HIDDEN (1 << 20)              /* 1048576 elements per row */
#define EPD_MAX_TOKENS_PER_RANK (1 << 20)     /* 1048576 tokens per call */
#define EPD_MAX_SM_BUDGET 4096
/* Every rank's workspace of one group together (all slots, all ranks), in
 * bytes: 1 TiB. A spec whose layout needs more is refused with EPD_ERR_INVALID_SPEC naming the
 * fields that make the size and the bytes; the size is computed with checked
 * 64-bit arithmetic, so no spec wraps it. Besides, the receive rows of one rank
 * (world_size * max_tokens_per_rank, times its local experts in expert_major)
 * must not exceed INT32_MAX. */
#define EPD_MAX_GROUP_WORKSPACE_BYTES (1ULL << 40)
#define EPD_FP8_BLOCK 128

/* The group spec: every rank of a group joins with the same values (except
 * `rank`). Arrays are borrowed for the duration of the call that takes the spec.
 * (epd's sources list these members, in this order, in core/spec_fields.h: a
 * new member goes at the end and gets a row there.) */
typedef struct epd_group_spec {
  uint32_t struct_size;            /* sizeof(epd_group_spec_t) */
  char name[EPD_NAME_MAX];         /* NUL-terminated, [A-Za-z0-9._-]{1,63} */
  uint64_t generation;             /* a restarted job bumps it; any value. A newer
                                      generation is assembled beside a running one
                                      and replaces it only once all its ranks joined
                                      (then the old handles get EPD_ERR_GROUP_CLOSED);
                                      a join older than the newest is
                                      EPD_ERR_STALE_GENERATION */
  int32_t world_size;              /* EP size, 1..EPD_MAX_WORLD_SIZE */
  int32_t rank;                    /* this rank, [0, world_size) */
  const epd_placement_t* placement; /* world_size entries; NULL = every rank on the host of node 0 */
  int32_t num_experts;             /* global experts incl. redundant, world_size..EPD_MAX_EXPERTS */
  int32_t top_k;                   /* 1..min(EPD_MAX_TOP_K, num_experts) */
  const int32_t* expert_owner;     /* num_experts entries (expert -> rank), each in
                                      [0, world_size); a rank may own no expert (it
                                      receives no rows and still takes part in every
                                      call). NULL = contiguous: with B = num_experts /
                                      world_size and X = num_experts % world_size, ranks
                                      0..X-1 own B + 1 consecutive experts each and the
                                      other ranks B each, in rank order; i.e. expert e
                                      belongs to e / (B + 1) when e < X * (B + 1), else
                                      to X + (e - X * (B + 1)) / B (E = 10, W = 4:
                                      0 0 0 1 1 1 2 2 3 3) */
  int32_t hidden;                  /* elements per row, 1..EPD_MAX_HIDDEN */
  epd_dtype_t dtype;               /* activation dtype (inputs and combine) */
  epd_quant_t dispatch_quant;      /* dispatch payload format */
  int32_t max_tokens_per_rank;     /* capacity of one call, 1..EPD_MAX_TOKENS_PER_RANK */
  epd_mode_t mode;
  epd_layout_t layout;
  int32_t slots;                   /* in-flight dispatch/combine pairs, 2..EPD_MAX_SLOTS */
  uint32_t timeout_ms;             /* deadline for joins and waits, ms (any value); 0 = the daemon's
                                      server.join_timeout_ms (default 30000), for the join and
                                      every wait (the daemon tells libepd-client its value) */
  int32_t sm_budget;               /* GPU high_throughput: SMs to use, 0 = executor default,
                                      0..EPD_MAX_SM_BUDGET */
  epd_executor_t executor;         /* GPU groups: who launches the kernels (default daemon); a host
                                      group accepts only EPD_EXECUTOR_DAEMON. Added after 0.2.0 in what
                                      was the struct's tail padding (sizeof unchanged): a spec from
                                      epd_group_spec_init or zeroed memory has the default */
} epd_group_spec_t;

/* Fill `spec` with defaults (struct_size set, 2 slots, bf16, rank_major,
 * high_throughput, timeout 30 s, everything else zero / NULL). */
EPD_API void epd_group_spec_init(epd_group_spec_t* spec);

/* Check a spec. Returns EPD_OK, EPD_ERR_INVALID_SPEC / EPD_ERR_FP8_ALIGNMENT for
 * a bad field or a workspace above EPD_MAX_GROUP_WORKSPACE_BYTES, or
 * EPD_ERR_INVALID_ARGUMENT for a NULL spec or a struct_size smaller than this
 * library's;
 * when `msg` is not NULL it receives a NUL-terminated message naming the field
 * and value (truncated to msg_len). */
EPD_API epd_status_t epd_group_spec_validate(const epd_group_spec_t* spec, char* msg,
                                             size_t msg_len);

/* Deprecated (removed in 0.3): one workspace-bytes function remains,
 * epd_group_spec_workspace_bytes (epd.h), which gives what a node and GPU hold.
 * This one gives the exact bytes for one `rank` (the sum over a GPU's ranks is
 * that GPU's share). Returns EPD_OK and sets *bytes, or a spec error. */
EPD_DEPRECATED("use epd_group_spec_workspace_bytes; removed in 0.3")
EPD_API epd_status_t epd_group_workspace_bytes(const epd_group_spec_t* spec, int32_t rank,
                                               uint64_t* bytes);

#ifdef __cplusplus
} /* extern "C" */
#endif
