"""Workflows as code: build a definition in Python, get exactly what the same YAML gives.

    from legato.flow import Cron, Parallel, Python, Shell, Workflow

    flow = (
        Workflow("daily-sales", run_strategy=Parallel(4), triggers=[Cron("0 2 * * *")])
        .step(Shell("extract", command="echo rows=3 >> $LEGATO_OUTPUTS", outputs=["rows"]))
        .step(Python("load", "my_pkg.load:run", after=["extract"]))
    )
    flow.definition()   # the validated WorkflowDefinition (DefinitionError names each bad path)
    flow.to_yaml()      # canonical YAML; Workflow.from_yaml(text) reads it back

``legato workflow push path/to/file.py:flow`` (or ``package.module:flow``) pushes it.
"""

from legato.flow.data import dump_yaml
from legato.flow.loading import WorkflowNotFound, load_workflow
from legato.flow.options import (
    Backoff,
    Expr,
    FirstOnly,
    LastOnly,
    Next,
    Parallel,
    Param,
    Publish,
    Retry,
    Sequential,
    SerialLatestOnly,
    Signal,
    StrictSequential,
    WorkflowRef,
)
from legato.flow.steps import (
    Container,
    Foreach,
    Http,
    Loop,
    Mount,
    Noop,
    Notebook,
    Python,
    Shell,
    Sleep,
    Sql,
    Statement,
    Step,
    Subworkflow,
    step_from_model,
)
from legato.flow.triggers import Cron, Signals
from legato.flow.workflow import Workflow

__all__ = [
    "Backoff",
    "Container",
    "Cron",
    "Expr",
    "FirstOnly",
    "Foreach",
    "Http",
    "LastOnly",
    "Loop",
    "Mount",
    "Next",
    "Noop",
    "Notebook",
    "Parallel",
    "Param",
    "Publish",
    "Python",
    "Retry",
    "Sequential",
    "SerialLatestOnly",
    "Shell",
    "Signal",
    "Signals",
    "Sleep",
    "Sql",
    "Statement",
    "Step",
    "StrictSequential",
    "Subworkflow",
    "Workflow",
    "WorkflowNotFound",
    "WorkflowRef",
    "dump_yaml",
    "load_workflow",
    "step_from_model",
]
