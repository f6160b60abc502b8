-- One trace per run: the run's root span id is reserved when the run is created (traceparent), each
-- attempt's span id when it is dispatched, and the spans are emitted when they end, from any replica.

ALTER TABLE workflow_instance ADD COLUMN trace_parent text;   -- parent of the run's root span, if any
ALTER TABLE workflow_instance ADD COLUMN trace_links jsonb;   -- spans the run links to (signals)
ALTER TABLE step_attempt ADD COLUMN span_id text;
