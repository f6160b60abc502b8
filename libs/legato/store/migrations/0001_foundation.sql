-- Foundation: the transactional outbox, durable message dedup, dead letters.

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    subject     text        NOT NULL,
    payload     bytea       NOT NULL,
    msg_id      text,
    headers     jsonb,
    core        boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- "Message applied" keys, written in the same transaction as the message's effect.
CREATE TABLE applied_message (
    consumer    text        NOT NULL,
    key         text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, key)
);
CREATE INDEX applied_message_age ON applied_message (applied_at);

-- Messages no handler could apply, kept whole with the error: nothing is silently dropped.
CREATE TABLE dead_letter (
    id          bigserial PRIMARY KEY,
    stream      text        NOT NULL,
    consumer    text        NOT NULL,
    subject     text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    msg_id      text,
    headers     jsonb       NOT NULL DEFAULT '{}',
    payload     bytea       NOT NULL,
    error       text        NOT NULL,
    deliveries  integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, consumer, stream_seq)
);
