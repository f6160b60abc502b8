-- A cancelled attempt of a stopped run keeps its run's strategy slot until its executor confirms that
-- it stopped (or is known dead), at most until stopping_until.
ALTER TABLE step_attempt ADD COLUMN stopping_until timestamptz;

-- What the liveness sweep looks at: attempts not settled yet (few at any time).
CREATE INDEX step_attempt_unsettled ON step_attempt (dispatched_at)
    WHERE status IN ('dispatched', 'running') OR stopping_until IS NOT NULL;

-- A work item dead-lettered by its executor settles its attempt (msg_id = attempt id).
CREATE INDEX IF NOT EXISTS dead_letter_msg_id ON dead_letter (msg_id);
