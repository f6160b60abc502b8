-- The signal router: signals stored once per (name, id), signal triggers registered on activation,
-- partial joins, and the tuples that fired (each exactly once) — the lineage is read from these.

CREATE TABLE signal (
    seq                 bigserial   NOT NULL,            -- storage order (listing)
    name                text        NOT NULL,
    id                  text        NOT NULL,            -- Nats-Msg-Id, else the stream sequence
    params              jsonb,                           -- the JSON object (NULL when rejected)
    raw                 text,                            -- the body as received, when rejected
    publisher           text,
    publisher_workflow  text,
    publisher_instance  text,
    publisher_step      text,
    published_at        timestamptz NOT NULL,            -- when the stream stored it
    received_at         timestamptz NOT NULL DEFAULT now(),
    stream_seq          bigint,
    rejected            boolean     NOT NULL DEFAULT false,
    error               text,
    traceparent         text,                            -- the span that ingested it (links)
    PRIMARY KEY (name, id)
);
CREATE INDEX signal_recent ON signal (seq DESC);
CREATE INDEX signal_rejected ON signal (seq DESC) WHERE rejected;
CREATE INDEX signal_by_name ON signal (name, published_at) WHERE NOT rejected;
CREATE INDEX signal_by_publisher ON signal (publisher_instance) WHERE publisher_instance IS NOT NULL;

-- Optional declared shape of a signal name: {"required": [...], "fields": {name: type}}.
CREATE TABLE signal_schema (
    name        text PRIMARY KEY,
    schema      jsonb       NOT NULL,
    updated_by  text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Signal triggers of active workflow versions, written in the push/activate transaction.
CREATE TABLE signal_trigger (
    workflow_id        text        NOT NULL,
    trigger_id         text        NOT NULL,
    version            integer     NOT NULL,
    since              timestamptz,             -- stored signals from then on count too
    registered_at      timestamptz NOT NULL,    -- else only signals published from then on count
    active             boolean     NOT NULL DEFAULT true,
    caught_up_version  integer,                 -- `since` replay done for this version
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, trigger_id)
);

-- Bumped by every registration change: routers reload their trigger table when it moves.
CREATE TABLE signal_trigger_epoch (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint  NOT NULL
);
INSERT INTO signal_trigger_epoch (singleton, epoch) VALUES (true, 0);

-- Partial tuples of joined triggers: which legs arrived (signal ids, times, fields), until it fires
-- or expires. The row lock of the upsert serialises routers completing the same tuple.
CREATE TABLE signal_join (
    workflow_id  text        NOT NULL,
    trigger_id   text        NOT NULL,
    tuple_key    text        NOT NULL,
    join_values  jsonb       NOT NULL,
    members      jsonb       NOT NULL,      -- {leg: {"id", "at", "fields"}}
    first_at     timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    fired_at     timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, trigger_id, tuple_key)
);
CREATE INDEX signal_join_pending ON signal_join (workflow_id, trigger_id, expires_at) WHERE fired_at IS NULL;
CREATE INDEX signal_join_expiry ON signal_join (expires_at);

-- One row per fired tuple: the run it started and the signals that made it.
CREATE TABLE signal_trigger_fire (
    workflow_id  text        NOT NULL,
    trigger_id   text        NOT NULL,
    tuple_key    text        NOT NULL,
    instance_id  text        NOT NULL,
    trigger_key  text        NOT NULL,
    signals      jsonb       NOT NULL,      -- [{"name", "id"}]
    params       jsonb,
    error        text,                      -- params could not be computed: no run
    traceparent  text,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, trigger_id, tuple_key)
);
CREATE INDEX signal_trigger_fire_signals ON signal_trigger_fire USING gin (signals jsonb_path_ops);
CREATE INDEX signal_trigger_fire_instance ON signal_trigger_fire (instance_id);
CREATE INDEX signal_wait_satisfied_by ON signal_wait (satisfied_by) WHERE satisfied_by IS NOT NULL;

-- Signal triggers of workflows activated before this migration count from now on.
INSERT INTO signal_trigger (workflow_id, trigger_id, version, since, registered_at, active)
SELECT w.id, t->>'id', w.active_version, (t->>'since')::timestamptz, now(), true
FROM workflow w
JOIN workflow_version v ON v.workflow_id = w.id AND v.version = w.active_version
CROSS JOIN LATERAL jsonb_array_elements(coalesce(v.definition->'triggers', '[]'::jsonb)) AS t
WHERE w.active AND t->>'type' = 'signal';
