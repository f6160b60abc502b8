-- Who set a workflow's run strategy through the API (workflow.set_run_strategy), why and when, beside
-- paused_by/paused_reason/paused_at; the change is also in operator_action. Activating a version
-- (which applies the definition's strategy again) clears them.

ALTER TABLE workflow ADD COLUMN strategy_set_by text;
ALTER TABLE workflow ADD COLUMN strategy_reason text;
ALTER TABLE workflow ADD COLUMN strategy_set_at timestamptz;
