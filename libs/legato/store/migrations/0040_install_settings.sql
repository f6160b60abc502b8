-- Settings every process of one install must agree on, recorded by the first process that starts
-- (today: the number of scheduler partitions, which decides which replica drives which workflow).
CREATE TABLE install_setting (
    key        text PRIMARY KEY,
    value      text        NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now()
);
