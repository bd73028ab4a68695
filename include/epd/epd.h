/* epd/epd.h — libepd-client: the C ABI a serving-engine worker uses to attach
 * to the per-node epd daemon, join an EP group and run dispatch / combine.
 *
 * Model: one client (epd_client_t) per worker process holds one control
 * connection and one shared-memory session block. A client joins one or more
 * groups (epd_group_t, one EP rank each). The group's workspace lives in
 * daemon-owned shared memory mapped into the worker: dispatch copies the
 * caller's inputs into this rank's send slot, rings a doorbell and returns;
 * dispatch_wait returns views of the received rows; the caller writes its
 * expert outputs into `combine_in`; combine rings; combine_wait returns a view
 * of the reduced outputs. Views stay valid (address-stable) until the next
 * dispatch on the same slot or until the group is left.
 *
 * Errors: every function returns an epd_status_t (EPD_OK = 0, negative
 * errors); outputs are written only on success; epd_last_error(handle) gives a
 * message naming the offending value. Faults: a lost peer rank gives
 * EPD_ERR_PEER_LOST (naming the rank) from the pending or next wait of each
 * slot; a dead daemon gives EPD_ERR_DAEMON_LOST within about 100 ms; a stopping
 * daemon gives EPD_ERR_SHUTTING_DOWN. Every wait has a deadline.
 *
 * Thread-safety, per function below. In short: a client may be shared by the
 * threads of a process; a group's different slots may be driven from
 * different threads; one slot is driven by one thread at a time.
 */
#pragma once

#include "epd/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epd_client epd_client_t;
typedef struct epd_group epd_group_t;

#define EPD_CAP_HOST_EXECUTOR (1u << 0)
#define EPD_CAP_RANK_MAJOR (1u << 1)
#define EPD_CAP_EXPERT_MAJOR (1u << 2)
#define EPD_CAP_FP8_DISPATCH (1u << 3)

/* Default socket when connect is given NULL and $EPD_SOCKET is unset. */
#define EPD_DEFAULT_SOCKET "/run/epd/epd.sock"

typedef struct epd_client_info {
  uint32_t struct_size;     /* sizeof(epd_client_info_t), set by the caller */
  uint32_t protocol_major;  /* the daemon's protocol version */
  uint32_t protocol_minor;
  int32_t daemon_pid;
  uint64_t capabilities;    /* EPD_CAP_* */
  uint64_t session_id;
  char daemon_version[32];
} epd_client_info_t;

/* Connects to the daemon at `socket_path` (NULL: $EPD_SOCKET, else
 * EPD_DEFAULT_SOCKET) and maps the session block. *out is set on success.
 * Errors: EPD_ERR_DAEMON_LOST (no daemon there), EPD_ERR_VERSION_MISMATCH,
 * EPD_ERR_PERMISSION, EPD_ERR_PROTOCOL, EPD_ERR_SYSTEM. The message of a failed
 * connect is available from epd_last_error(NULL) on the calling thread.
 * Thread-safe. */
EPD_API epd_status_t epd_client_connect(const char* socket_path, epd_client_t** out);

/* Closes the connection and frees the client. Groups still joined are left
 * (the daemon sees the rank go) and their handles then accept only
 * epd_group_leave. NULL is ignored. Not thread-safe with other calls on the
 * same client. */
EPD_API void epd_client_disconnect(epd_client_t* client);

/* Daemon facts: protocol version, pid, version string, capabilities.
 * Thread-safe. */
EPD_API epd_status_t epd_client_query(epd_client_t* client, epd_client_info_t* out);

/* Joins a group with `spec` (validated here first, then by the daemon). The
 * first join creates the group; later joins must match field by field
 * (EPD_ERR_SPEC_MISMATCH names the field and both values). Blocks until all
 * world_size ranks have joined or spec->timeout_ms passes (EPD_ERR_TIMEOUT
 * names the missing ranks). Other errors: EPD_ERR_DUPLICATE_RANK,
 * EPD_ERR_STALE_GENERATION, EPD_ERR_INVALID_SPEC, EPD_ERR_UNSUPPORTED.
 * Thread-safe (joins of one client are serialised). */
EPD_API epd_status_t epd_group_join(epd_client_t* client, const epd_group_spec_t* spec, epd_group_t** out);

/* Leaves the group and frees the handle; the other ranks see this rank lost.
 * NULL is ignored (returns EPD_OK). Not thread-safe with other calls on the
 * same group. */
EPD_API epd_status_t epd_group_leave(epd_group_t* group);

typedef struct epd_dispatch_args {
  uint32_t struct_size;          /* sizeof(epd_dispatch_args_t) */
  const void* x;                 /* [n_tokens][hidden] in the group's dtype */
  const void* topk_ids;          /* [n_tokens][top_k], -1 = no expert */
  epd_id_dtype_t id_dtype;       /* EPD_ID_INT32 or EPD_ID_INT64 */
  const float* topk_weights;     /* [n_tokens][top_k]; NULL = weights 1 */
  int32_t n_tokens;              /* 0..max_tokens_per_rank (0 is legal: every rank takes part) */
} epd_dispatch_args_t;

typedef struct epd_src {
  int32_t rank;   /* source rank of a received row, -1 on padding rows */
  int32_t token;  /* token index at the source, -1 on padding rows */
} epd_src_t;

/* Views into the group workspace, valid until the next dispatch on the slot. */
typedef struct epd_dispatch_result {
  uint32_t struct_size;          /* sizeof(epd_dispatch_result_t), set by the caller */
  int32_t total_rows;            /* rows received (rank_major: rows [0, total_rows)) */
  int64_t capacity_rows;         /* rows of every array below */
  int32_t ids_per_row;           /* rank_major: top_k; expert_major: 1 */
  int32_t num_local_experts;
  const void* x;                 /* [capacity_rows][hidden]: dtype, or fp8 e4m3 bytes */
  const float* scales;           /* [capacity_rows][hidden / 128] with fp8, else NULL */
  const int32_t* ids;            /* [capacity_rows][ids_per_row] global ids, -1 elsewhere */
  const float* weights;          /* [capacity_rows][ids_per_row], 0 where the id is -1 */
  const epd_src_t* src;          /* [capacity_rows] */
  const int32_t* counts;         /* [num_local_experts] (token, expert) pairs per local expert */
  void* combine_in;              /* [capacity_rows][hidden] dtype: write expert outputs here */
  uint64_t x_row_bytes;          /* bytes of one row of x */
  uint64_t combine_row_bytes;    /* bytes of one row of combine_in / combine output */
  /* expert_major: rows of local expert l start at l * world_size * max_tokens_per_rank. */
} epd_dispatch_result_t;

/* Copies this rank's inputs into its send slot (checked: capacity, ids in
 * [-1, num_experts), no expert twice per token) and rings the dispatch
 * doorbell; returns without waiting. The caller's buffers are not kept.
 * Errors: EPD_ERR_BAD_SLOT, EPD_ERR_SLOT_BUSY, EPD_ERR_CAPACITY_EXCEEDED,
 * EPD_ERR_EXPERT_ID_OUT_OF_RANGE, EPD_ERR_INVALID_ARGUMENT, and the fault
 * statuses. Thread-safe for different slots. */
EPD_API epd_status_t epd_dispatch(epd_group_t* group, int32_t slot, const epd_dispatch_args_t* args);

/* Waits (spin briefly, then a shared futex in slices that also watch the
 * daemon connection) until every rank's dispatch of `slot` is done, at most
 * timeout_ms (0: the group's timeout_ms), and fills *out with views.
 * EPD_ERR_TIMEOUT leaves the dispatch in flight (wait again); any other error
 * ends it (the slot is free for a new dispatch). Calling it again after
 * success returns the same views. Thread-safe for different slots. */
EPD_API epd_status_t epd_dispatch_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                       epd_dispatch_result_t* out);

/* Rings the combine doorbell of `slot` after a successful dispatch_wait and
 * after the caller wrote its expert outputs into combine_in. Uses the routing
 * captured at dispatch. rank_major accepts EPD_WEIGHTS_ALREADY_APPLIED or
 * EPD_WEIGHTS_ONES; expert_major accepts all three. Every rank must pass the
 * same mode. Thread-safe for different slots. */
EPD_API epd_status_t epd_combine(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode);

/* Waits for the combine of `slot` like dispatch_wait and sets *out to a view
 * of the reduced outputs, [n_tokens][hidden] in the group's dtype (n_tokens of
 * this rank's dispatch), valid until the next dispatch on the slot. The slot
 * is free again afterwards. Thread-safe for different slots. */
EPD_API epd_status_t epd_combine_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms, const void** out);

/* Exact bytes of workspace the group places on (node, gpu) (gpu may be
 * EPD_GPU_HOST): what a serving engine subtracts from its memory share.
 * Needs no daemon. Thread-safe. */
EPD_API epd_status_t epd_workspace_bytes(const epd_group_spec_t* spec, int32_t node, int32_t gpu, uint64_t* bytes);

/* The message of the last failed call on `handle` (an epd_client_t* or
 * epd_group_t*), or of the last failed epd_client_connect on this thread when
 * `handle` is NULL. "" when none. The pointer is valid until the next call on
 * the same handle from the same thread. Thread-safe. */
EPD_API const char* epd_last_error(const void* handle);

#ifdef __cplusplus
} /* extern "C" */
#endif
