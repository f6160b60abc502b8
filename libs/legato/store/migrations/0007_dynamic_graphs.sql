-- Dynamic step graphs: foreach iterations and loop iterations are child runs with an inline body;
-- subworkflow steps start child runs of other workflows.

-- Path of the body inside the workflow's definition this run executes ("fanout", "outer/inner");
-- NULL for a run of the whole workflow.
ALTER TABLE workflow_instance ADD COLUMN body_path text;
-- Whether the run counts under its workflow's run strategy (child runs do not unless asked).
ALTER TABLE workflow_instance ADD COLUMN under_strategy boolean NOT NULL DEFAULT true;
-- Progress of a foreach/loop/subworkflow step: totals, next iteration to create, counts, children.
ALTER TABLE step_run ADD COLUMN progress jsonb;
CREATE INDEX workflow_instance_children ON workflow_instance (parent_instance_id, parent_step_id, parent_iteration, seq)
    WHERE parent_instance_id IS NOT NULL;
