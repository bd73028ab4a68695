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
 * Names: epd_<object>_<verb>, the object being what the call acts on: a
 * client (epd_client_*), a group handle (epd_group_*) or a group spec
 * (epd_group_spec_*). The 0.1 names (epd_dispatch, epd_gpu_views,
 * epd_last_error, ...) remain as deprecated aliases at the end of this file
 * until 0.3.
 *
 * Errors: every function returns an epd_status_t (EPD_OK = 0, negative
 * errors); outputs are written only on success; epd_client_last_error(client)
 * and epd_group_last_error(group) give a message naming the offending value.
 * Faults: a lost peer rank gives EPD_ERR_PEER_LOST (naming the rank) from the
 * pending or next wait of each slot; a dead daemon gives EPD_ERR_DAEMON_LOST
 * within about 100 ms; a stopping daemon gives EPD_ERR_SHUTTING_DOWN. Every
 * wait has a deadline.
 *
 * Thread-safety, per function below. In short: a client may be shared by the
 * threads of a process; a group's different slots may be driven from
 * different threads; one slot is driven by one thread at a time; nothing may
 * run on a group while it is left.
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
#define EPD_CAP_GPU_EXECUTOR (1u << 4) /* GPU placements served (a driver and a device were found) */

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
 * Bounded: connecting and the daemon's answer to the hello together take at
 * most $EPD_CONNECT_TIMEOUT_MS milliseconds (1 to 3600000; unset: 5000),
 * else EPD_ERR_TIMEOUT naming the socket and the wait (a saturated daemon:
 * full listen backlog, or no answer). A daemon at its file-descriptor limit
 * refuses with EPD_ERR_SYSTEM saying so. Other errors: EPD_ERR_DAEMON_LOST
 * (no daemon there), EPD_ERR_VERSION_MISMATCH, EPD_ERR_PERMISSION (also
 * max_sessions reached), EPD_ERR_QUOTA_EXCEEDED, EPD_ERR_PROTOCOL,
 * EPD_ERR_INVALID_ARGUMENT (a bad $EPD_CONNECT_TIMEOUT_MS, named). The message
 * of a failed connect is available from epd_client_last_error(NULL) on the
 * calling thread.
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

/* The message of the last failed call on `client` (joins included), or, for
 * NULL, of the last failed call on the calling thread that had no handle to
 * keep it (epd_client_connect, epd_group_spec_workspace_bytes). "" when none;
 * a fixed message when `client` is not a client handle. The string belongs to
 * the library and stays valid until the calling thread's next
 * epd_client_last_error / epd_group_last_error. Thread-safe (not with
 * epd_client_disconnect of the same client). */
EPD_API const char* epd_client_last_error(const epd_client_t* client);

/* Joins a group with `spec` (validated here first, then by the daemon). The
 * first join creates the group; later joins must match field by field
 * (EPD_ERR_SPEC_MISMATCH names the field and both values). Blocks until all
 * world_size ranks have joined or spec->timeout_ms passes (EPD_ERR_TIMEOUT
 * names the missing ranks). Other errors: EPD_ERR_DUPLICATE_RANK,
 * EPD_ERR_STALE_GENERATION, EPD_ERR_INVALID_SPEC, EPD_ERR_UNSUPPORTED; the
 * message is the client's (epd_client_last_error). Thread-safe (joins of one
 * client are serialised). */
EPD_API epd_status_t epd_group_join(epd_client_t* client, const epd_group_spec_t* spec, epd_group_t** out);

/* Leaves the group and frees the handle; the other ranks see this rank lost.
 * Every view and device address taken from the handle goes with it. NULL is
 * ignored (returns EPD_OK). Not thread-safe with any other call on the same
 * group. */
EPD_API epd_status_t epd_group_leave(epd_group_t* group);

/* The message of the last failed call on `group`; "" when none or for NULL; a
 * fixed message when `group` is not a group handle. The string belongs to the
 * library and stays valid until the calling thread's next
 * epd_client_last_error / epd_group_last_error. Thread-safe (not with
 * epd_group_leave of the same group). */
EPD_API const char* epd_group_last_error(const epd_group_t* group);

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
EPD_API epd_status_t epd_group_dispatch(epd_group_t* group, int32_t slot, const epd_dispatch_args_t* args);

/* Waits (spin briefly, then a shared futex in slices that also watch the
 * daemon connection) until every rank's dispatch of `slot` is done, at most
 * timeout_ms (0: the group's timeout_ms), and fills *out with views.
 * EPD_ERR_TIMEOUT leaves the dispatch in flight (wait again); any other error
 * ends it (the slot is free for a new dispatch). Calling it again after
 * success returns the same views. Thread-safe for different slots. */
EPD_API epd_status_t epd_group_dispatch_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                             epd_dispatch_result_t* out);

/* Rings the combine doorbell of `slot` after a successful dispatch_wait and
 * after the caller wrote its expert outputs into combine_in. Uses the routing
 * captured at dispatch. rank_major accepts EPD_WEIGHTS_ALREADY_APPLIED or
 * EPD_WEIGHTS_ONES; expert_major accepts all three. Every rank must pass the
 * same mode. A second combine for one dispatch is EPD_ERR_SLOT_BUSY while the
 * first is in flight; on an idle slot (or before dispatch_wait returned)
 * EPD_ERR_NO_DISPATCH, the message saying which. Thread-safe for different
 * slots. */
EPD_API epd_status_t epd_group_combine(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode);

/* Waits for the combine of `slot` like dispatch_wait and sets *out to a view
 * of the reduced outputs, [n_tokens][hidden] in the group's dtype (n_tokens of
 * this rank's dispatch), valid until the next dispatch on the slot. The slot
 * is free again afterwards. Thread-safe for different slots. */
EPD_API epd_status_t epd_group_combine_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                            const void** out);

/* ---- GPU groups (every rank of the group placed on a GPU: placement gpu >= 0) ----
 *
 * The daemon owns each rank's workspace in GPU memory and keeps, per slot, a
 * stream armed ahead of time that waits for every rank's doorbell, runs the
 * kernel and writes every rank's completion word: no CPU is on the critical
 * path. A worker enqueues its calls on its own CUDA stream (a cudaStream_t /
 * CUstream passed as void*; NULL = the legacy default stream); they are only
 * copies, memsets and stream memory operations with constant values, so they
 * are legal inside CUDA graph capture and a captured graph can be replayed.
 * The host calls above (epd_group_dispatch, ...) return EPD_ERR_UNSUPPORTED on
 * a GPU group. Per slot the calls alternate dispatch_async ->
 * dispatch_wait_async -> combine_async -> combine_wait_async (checked when
 * enqueued: EPD_ERR_SLOT_BUSY / EPD_ERR_NO_DISPATCH otherwise) and must also
 * execute in that order: enqueue a slot's calls on one stream, or order the
 * streams yourself (events), since each doorbell overwrites the previous one.
 *
 * Errors surface on the host: epd_group_gpu_status() reports the status of
 * the slot's last completed operation: a bad expert id (naming rank, token, k
 * and value; the next call works), EPD_ERR_PEER_LOST when a rank of the group
 * died or left (every armed wait is then released so no stream hangs; every
 * rank must leave and join again before the group runs again), or
 * EPD_ERR_SHUTTING_DOWN. After either abort the enqueue calls refuse with it.
 *
 * Thread-safety of the six calls below, on one group handle:
 *  - the four enqueue calls: different slots from different threads at once;
 *    one slot from one thread at a time (calls on one slot must not overlap;
 *    moving a slot between threads needs the caller's own synchronisation);
 *  - epd_group_gpu_status: any thread, any slot, concurrently with the
 *    enqueue calls and with other status calls (their device reads take turns
 *    on one private stream, one short copy at a time);
 *  - epd_group_gpu_views: no driver call at all; any thread, any time (also
 *    during capture), concurrently with every other call;
 *  - none of them concurrently with epd_group_leave of the group.
 * Different groups are independent, whichever threads and GPUs they use. */

typedef struct epd_gpu_dispatch_args {
  uint32_t struct_size;            /* sizeof(epd_gpu_dispatch_args_t) */
  const void* x;                   /* device [rows][hidden] in the group's dtype; NULL: the caller wrote send_x itself */
  const int32_t* topk_ids;         /* device [rows][top_k] int32, -1 = no expert (with x) */
  const float* topk_weights;       /* device [rows][top_k]; NULL = weights 1 */
  const int32_t* n_tokens_device;  /* device int32 read when the kernel runs (graph replays may vary it), or NULL */
  int32_t n_tokens;                /* the count when n_tokens_device is NULL; else the rows copied (an upper bound) */
} epd_gpu_dispatch_args_t;

/* Device addresses of one slot of this rank's workspace (mapped into this
 * process at join). Layouts and row sizes as in epd_dispatch_result_t. (The
 * struct tag differs from the deprecated function epd_gpu_views: in C++ a
 * function of the tag's name would hide the struct.) */
typedef struct epd_gpu_slot_views {
  uint32_t struct_size;            /* sizeof(epd_gpu_views_t), set by the caller */
  int32_t device;                  /* CUDA device ordinal of the group */
  void* send_x;                    /* [max_tokens_per_rank][hidden] dtype */
  int32_t* send_ids;               /* [max_tokens_per_rank][top_k] int32 */
  float* send_weights;             /* [max_tokens_per_rank][top_k] */
  const int32_t* recv_total;       /* one int32: rows received by the last dispatch */
  const int32_t* recv_counts;      /* [num_local_experts] */
  const void* recv_x;              /* [capacity_rows][hidden]: dtype, or fp8 e4m3 bytes */
  const float* recv_scales;        /* [capacity_rows][hidden / 128] with fp8, else NULL */
  const int32_t* recv_ids;         /* [capacity_rows][ids_per_row] */
  const float* recv_weights;       /* [capacity_rows][ids_per_row] */
  const epd_src_t* recv_src;       /* [capacity_rows] */
  void* combine_in;                /* [capacity_rows][hidden] dtype */
  const void* combine_out;         /* [max_tokens_per_rank][hidden] dtype */
  int64_t capacity_rows;
  int32_t ids_per_row;
  int32_t num_local_experts;
  uint64_t x_row_bytes, combine_row_bytes;
} epd_gpu_views_t;

/* Enqueues on `stream`: the input copy into the send slot (skipped when x is
 * NULL), the token count and the dispatch doorbell. Checks on the host only
 * what the host knows (slot, order, n_tokens bound); expert ids are checked by
 * the kernel (epd_group_gpu_status reports them). Legal during capture. */
EPD_API epd_status_t epd_group_dispatch_async(epd_group_t* group, int32_t slot, const epd_gpu_dispatch_args_t* args,
                                              void* stream);
/* Enqueues on `stream` a wait for the slot's dispatch completion; recv_* of
 * the views then hold the received rows. Legal during capture. */
EPD_API epd_status_t epd_group_dispatch_wait_async(epd_group_t* group, int32_t slot, void* stream);
/* Enqueues the copy of `rows` expert-output rows (device, dtype) into
 * combine_in (skipped when expert_out is NULL), the weight mode and the
 * combine doorbell. Legal during capture. */
EPD_API epd_status_t epd_group_combine_async(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode,
                                             const void* expert_out, int64_t rows, void* stream);
/* Enqueues on `stream` a wait for the slot's combine completion; combine_out
 * then holds this rank's reduced outputs. Legal during capture. */
EPD_API epd_status_t epd_group_combine_wait_async(epd_group_t* group, int32_t slot, void* stream);

/* Host, never during stream capture (it synchronises a private stream): waits
 * at most timeout_ms (0: the group's timeout_ms) for the operation last
 * enqueued on the slot when the call starts to complete, and returns its
 * status (EPD_OK before any enqueue; EPD_ERR_TIMEOUT when it has not completed,
 * e.g. the caller's stream has not reached it or a rank has not rung). A
 * PEER_LOST or SHUTTING_DOWN seen here makes later enqueues refuse. */
EPD_API epd_status_t epd_group_gpu_status(epd_group_t* group, int32_t slot, uint32_t timeout_ms);

/* Fills *out with the device addresses of `slot` (valid on the group's
 * device; out->struct_size set by the caller). Lifetime: the addresses are the
 * same on every call for the life of the handle and stay mapped until
 * epd_group_leave(group), also after EPD_ERR_PEER_LOST, a lost daemon or
 * epd_client_disconnect (the handle's mapping holds its own reference to the
 * memory; what it holds is then meaningless). They do not survive a re-join:
 * a new handle from epd_group_join maps the workspace afresh at addresses
 * that may differ, so take the views again and re-capture every CUDA graph
 * that used the old ones. Contents follow the slot's order: recv_* after
 * dispatch_wait_async until the slot's next dispatch, combine_out after
 * combine_wait_async until its next combine (in stream order), undefined after
 * an abort. No driver call: any thread, any time, also during capture. */
EPD_API epd_status_t epd_group_gpu_views(epd_group_t* group, int32_t slot, epd_gpu_views_t* out);

/* ---- group specs (no daemon needed) ---- */

/* Exact bytes of workspace the group places on (node, gpu) (gpu may be
 * EPD_GPU_HOST), summed over the ranks placed there: what a serving engine
 * subtracts from its memory share; 0 where no rank is placed. This is the one
 * workspace-size query of the client ABI. Validates `spec` first
 * (EPD_ERR_INVALID_SPEC, EPD_ERR_FP8_ALIGNMENT; EPD_ERR_INVALID_ARGUMENT for a
 * NULL argument); the message is epd_client_last_error(NULL) on the calling
 * thread. *bytes is written only on success. Thread-safe. */
EPD_API epd_status_t epd_group_spec_workspace_bytes(const epd_group_spec_t* spec, int32_t node, int32_t gpu,
                                                    uint64_t* bytes);

/* ---- deprecated names, removed in 0.3 ----
 * Each is an exported symbol that forwards to its replacement and behaves
 * exactly like it (same statuses, same messages, same thread-safety). */

EPD_DEPRECATED("use epd_group_dispatch; removed in 0.3")
EPD_API epd_status_t epd_dispatch(epd_group_t* group, int32_t slot, const epd_dispatch_args_t* args);
EPD_DEPRECATED("use epd_group_dispatch_wait; removed in 0.3")
EPD_API epd_status_t epd_dispatch_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                       epd_dispatch_result_t* out);
EPD_DEPRECATED("use epd_group_combine; removed in 0.3")
EPD_API epd_status_t epd_combine(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode);
EPD_DEPRECATED("use epd_group_combine_wait; removed in 0.3")
EPD_API epd_status_t epd_combine_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms, const void** out);
EPD_DEPRECATED("use epd_group_dispatch_async; removed in 0.3")
EPD_API epd_status_t epd_dispatch_async(epd_group_t* group, int32_t slot, const epd_gpu_dispatch_args_t* args,
                                        void* stream);
EPD_DEPRECATED("use epd_group_dispatch_wait_async; removed in 0.3")
EPD_API epd_status_t epd_dispatch_wait_async(epd_group_t* group, int32_t slot, void* stream);
EPD_DEPRECATED("use epd_group_combine_async; removed in 0.3")
EPD_API epd_status_t epd_combine_async(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode,
                                       const void* expert_out, int64_t rows, void* stream);
EPD_DEPRECATED("use epd_group_combine_wait_async; removed in 0.3")
EPD_API epd_status_t epd_combine_wait_async(epd_group_t* group, int32_t slot, void* stream);
EPD_DEPRECATED("use epd_group_gpu_status; removed in 0.3")
EPD_API epd_status_t epd_gpu_status(epd_group_t* group, int32_t slot, uint32_t timeout_ms);
EPD_DEPRECATED("use epd_group_gpu_views; removed in 0.3")
EPD_API epd_status_t epd_gpu_views(epd_group_t* group, int32_t slot, epd_gpu_views_t* out);
EPD_DEPRECATED("use epd_group_spec_workspace_bytes; removed in 0.3")
EPD_API epd_status_t epd_workspace_bytes(const epd_group_spec_t* spec, int32_t node, int32_t gpu, uint64_t* bytes);
/* `handle` is an epd_client_t*, an epd_group_t* or NULL: the same string as
 * epd_client_last_error / epd_group_last_error of it (NULL as a client). */
EPD_DEPRECATED("use epd_client_last_error or epd_group_last_error; removed in 0.3")
EPD_API const char* epd_last_error(const void* handle);

#ifdef __cplusplus
} /* extern "C" */
#endif
