/*
 * The part of Apache Aurora's scheduler API that matchmaker speaks.
 *
 * Written for matchmaker. Field ids, names, types and enum values follow
 * Aurora 0.22's org/apache/aurora/gen/api.thrift so that this subset is
 * wire-compatible with a real Aurora scheduler: a peer that knows more fields
 * than listed here simply has them skipped by the other side.
 *
 * Regenerate the Python bindings with scripts/gen_aurora.sh.
 */

namespace py api

// ---- codes and states ------------------------------------------------------

enum ResponseCode {
  INVALID_REQUEST = 0,
  OK = 1,
  ERROR = 2,
  WARNING = 3,
  AUTH_FAILED = 4,
  JOB_UPDATING_ERROR = 5,
  ERROR_TRANSIENT = 6
}

enum ScheduleStatus {
  PENDING = 0,
  STARTING = 1,
  RUNNING = 2,
  FINISHED = 3,
  FAILED = 4,
  KILLED = 5,
  KILLING = 6,
  LOST = 7,
  ASSIGNED = 9,
  INIT = 11,
  RESTARTING = 12,
  PREEMPTING = 13,
  THROTTLED = 16,
  DRAINING = 17,
  PARTITIONED = 18
}

const string AURORA_EXECUTOR_NAME = "AuroraExecutor"
const string GOOD_IDENTIFIER_PATTERN_PYTHON = "^[\\w\\-\\.]+$"

const set<ScheduleStatus> TERMINAL_STATES = [
  ScheduleStatus.FAILED, ScheduleStatus.FINISHED, ScheduleStatus.KILLED, ScheduleStatus.LOST
]

const set<ScheduleStatus> ACTIVE_STATES = [
  ScheduleStatus.ASSIGNED, ScheduleStatus.DRAINING, ScheduleStatus.KILLING,
  ScheduleStatus.PENDING, ScheduleStatus.PREEMPTING, ScheduleStatus.RESTARTING,
  ScheduleStatus.RUNNING, ScheduleStatus.STARTING, ScheduleStatus.PARTITIONED,
  ScheduleStatus.THROTTLED
]

// ---- identities and keys ---------------------------------------------------

struct Identity {
  2: string user
}

struct JobKey {
  1: string role
  2: string environment
  3: string name
}

// ---- task configuration ----------------------------------------------------

struct ValueConstraint {
  1: bool negated
  2: set<string> values
}

struct LimitConstraint {
  1: i32 limit
}

union TaskConstraint {
  1: ValueConstraint value
  2: LimitConstraint limit
}

struct Constraint {
  1: string name
  2: TaskConstraint constraint
}

struct Metadata {
  1: string key
  2: string value
}

struct ExecutorConfig {
  1: string name
  2: string data
}

union Resource {
  1: double numCpus
  2: i64 ramMb
  3: i64 diskMb
  4: string namedPort
  5: i64 numGpus
}

struct MesosContainer {
}

struct DockerParameter {
  1: string name
  2: string value
}

struct DockerContainer {
  1: string image
  2: optional list<DockerParameter> parameters
}

union Container {
  1: MesosContainer mesos
  2: DockerContainer docker
}

struct TaskConfig {
  28: JobKey job
  17: Identity owner
  7: bool isService
  11: i32 priority
  13: i32 maxTaskFailures
  18: optional bool production
  30: optional string tier
  32: set<Resource> resources
  20: set<Constraint> constraints
  22: optional map<string, string> taskLinks
  23: optional string contactEmail
  25: optional ExecutorConfig executorConfig
  27: optional set<Metadata> metadata
  29: Container container
}

enum CronCollisionPolicy {
  KILL_EXISTING = 0,
  CANCEL_NEW = 1,
  RUN_OVERLAP = 2
}

struct JobConfiguration {
  9: JobKey key
  7: Identity owner
  4: optional string cronSchedule
  5: CronCollisionPolicy cronCollisionPolicy
  6: TaskConfig taskConfig
  8: i32 instanceCount
}

// ---- tasks and their history -----------------------------------------------

struct TaskEvent {
  1: i64 timestamp
  2: ScheduleStatus status
  3: optional string message
  4: optional string scheduler
}

struct AssignedTask {
  1: string taskId
  2: string slaveId
  3: string slaveHost
  4: TaskConfig task
  5: map<string, i32> assignedPorts
  6: i32 instanceId
}

struct ScheduledTask {
  1: AssignedTask assignedTask
  2: ScheduleStatus status
  3: i32 failureCount
  4: list<TaskEvent> taskEvents
  5: string ancestorId
  6: i32 timesPartitioned
}

struct TaskQuery {
  2: optional string jobName
  4: optional set<string> taskIds
  5: optional set<ScheduleStatus> statuses
  7: optional set<i32> instanceIds
  9: optional string environment
  10: optional set<string> slaveHosts
  11: optional set<JobKey> jobKeys
  12: optional i32 offset
  13: optional i32 limit
  14: optional string role
}

struct PendingReason {
  1: string taskId
  2: string reason
}

// ---- responses -------------------------------------------------------------

struct ScheduleStatusResult {
  1: list<ScheduledTask> tasks
}

struct GetJobsResult {
  1: set<JobConfiguration> configs
}

struct GetPendingReasonResult {
  1: set<PendingReason> reasons
}

union Result {
  3: ScheduleStatusResult scheduleStatusResult
  4: GetJobsResult getJobsResult
  21: GetPendingReasonResult getPendingReasonResult
}

struct ServerInfo {
  1: string clusterName
  3: string statsUrlPrefix
}

struct ResponseDetail {
  1: string message
}

struct Response {
  1: ResponseCode responseCode
  3: optional Result result
  5: ServerInfo serverInfo
  6: list<ResponseDetail> details
}

// ---- services --------------------------------------------------------------

service ReadOnlyScheduler {
  Response getTasksStatus(1: TaskQuery query)
  Response getTasksWithoutConfigs(1: TaskQuery query)
  Response getPendingReason(1: TaskQuery query)
  Response getJobs(1: string ownerRole)
}

service AuroraSchedulerManager extends ReadOnlyScheduler {
  Response createJob(1: JobConfiguration description)
  Response killTasks(4: JobKey job, 5: set<i32> instances, 6: string message)
}
