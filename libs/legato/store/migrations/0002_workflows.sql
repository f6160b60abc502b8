-- Workflows, versions, runs (instances), steps, attempts, timeline, durable timers, partition leases.

CREATE TABLE workflow (
    id                text PRIMARY KEY,
    active            boolean     NOT NULL DEFAULT true,
    active_version    integer     NOT NULL,
    latest_version    integer     NOT NULL,
    -- The effective run strategy: from the active definition, or set by workflow.set_run_strategy.
    run_strategy      text        NOT NULL,
    max_concurrency   integer     NOT NULL,
    strategy_source   text        NOT NULL DEFAULT 'definition',
    paused            boolean     NOT NULL DEFAULT false,
    -- strict_sequential: the failed run that holds the queue, and since when.
    blocked_by        text,
    blocked_since     timestamptz,
    running_count     integer     NOT NULL DEFAULT 0,
    queued_count      integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_version (
    workflow_id  text        NOT NULL REFERENCES workflow (id) ON DELETE CASCADE,
    version      integer     NOT NULL,
    digest       text        NOT NULL,
    definition   jsonb       NOT NULL,
    source       text,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE workflow_instance (
    id                  text PRIMARY KEY,
    workflow_id         text        NOT NULL,
    version             integer     NOT NULL,
    seq                 bigserial   NOT NULL,
    trigger_key         text        NOT NULL,
    trigger             jsonb       NOT NULL,
    status              text        NOT NULL,
    reason              jsonb,
    params              jsonb       NOT NULL DEFAULT '{}',
    run_params          jsonb       NOT NULL DEFAULT '{}',
    outputs             jsonb,
    error               text,
    run_number          integer     NOT NULL DEFAULT 1,
    unblocked           boolean     NOT NULL DEFAULT false,
    parent_instance_id  text,
    parent_step_id      text,
    parent_iteration    integer,
    root_instance_id    text,
    traceparent         text,
    requested_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    ended_at            timestamptz,
    UNIQUE (workflow_id, trigger_key)
);
CREATE INDEX workflow_instance_queue ON workflow_instance (workflow_id, status, seq);
CREATE INDEX workflow_instance_recent ON workflow_instance (workflow_id, seq DESC);
CREATE INDEX workflow_instance_all_recent ON workflow_instance (seq DESC);
CREATE INDEX workflow_instance_status ON workflow_instance (status, seq DESC);
CREATE INDEX workflow_instance_parent ON workflow_instance (parent_instance_id, parent_step_id, parent_iteration)
    WHERE parent_instance_id IS NOT NULL;

CREATE TABLE step_run (
    instance_id        text        NOT NULL,
    step_id            text        NOT NULL,
    status             text        NOT NULL,
    attempts           integer     NOT NULL DEFAULT 0,
    current_attempt_id text,
    retries_error      integer     NOT NULL DEFAULT 0,
    retries_platform   integer     NOT NULL DEFAULT 0,
    retries_timeout    integer     NOT NULL DEFAULT 0,
    failure_ignored    boolean     NOT NULL DEFAULT false,
    params             jsonb,
    outputs            jsonb,
    error              text,
    reason             jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    ended_at           timestamptz,
    PRIMARY KEY (instance_id, step_id)
);

CREATE TABLE step_attempt (
    id           text PRIMARY KEY,
    instance_id  text        NOT NULL,
    step_id      text        NOT NULL,
    attempt      integer     NOT NULL,
    status       text        NOT NULL,
    failure_kind text,
    executor     text,
    queue        text,
    dispatched_at timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    ended_at     timestamptz,
    outputs      jsonb,
    error        text,
    exit_code    integer,
    log_tail     text
);
CREATE INDEX step_attempt_instance ON step_attempt (instance_id, step_id, attempt);

CREATE TABLE timeline (
    id           bigserial PRIMARY KEY,
    instance_id  text        NOT NULL,
    step_id      text,
    at           timestamptz NOT NULL DEFAULT now(),
    event        text        NOT NULL,
    message      text,
    actor        text,
    details      jsonb
);
CREATE INDEX timeline_instance ON timeline (instance_id, id);

-- Durable timers (retry backoff, step and run timeouts); fired once by the owning scheduler.
CREATE TABLE timer (
    id           bigserial PRIMARY KEY,
    partition    integer     NOT NULL,
    workflow_id  text        NOT NULL,
    instance_id  text        NOT NULL,
    step_id      text,
    attempt_id   text,
    kind         text        NOT NULL,
    fire_at      timestamptz NOT NULL,
    payload      jsonb
);
CREATE INDEX timer_due ON timer (partition, fire_at);
CREATE INDEX timer_instance ON timer (instance_id);

CREATE TABLE partition_lease (
    partition    integer PRIMARY KEY,
    owner        text        NOT NULL,
    incarnation  text        NOT NULL,
    token        bigint      NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE TABLE scheduler_replica (
    name         text PRIMARY KEY,
    incarnation  text        NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- Operator actions already applied (idempotency by action id).
CREATE TABLE operator_action (
    id           text PRIMARY KEY,
    workflow_id  text        NOT NULL,
    instance_id  text,
    action       text        NOT NULL,
    actor        text,
    reason       text,
    result       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
