"""The daily sales workflow, written in Python with ``legato.flow`` instead of YAML.

Push it:   legato workflow push examples/code/daily_sales.py:flow
Check it:  legato workflow validate examples/code/daily_sales.py:flow
See YAML:  python -c "from examples.code.daily_sales import flow; print(flow.to_yaml())"
Run it:    legato start daily-sales -p day=2026-03-01 -p regions=emea,apac

The python step runs ``examples.code.sales_steps:load``, which the executor imports from its working
directory (the checkout, as ``make run`` starts it).
"""

from __future__ import annotations

from legato.flow import (
    Backoff,
    Cron,
    Foreach,
    Parallel,
    Param,
    Publish,
    Python,
    Retry,
    Shell,
    Signal,
    Signals,
    Workflow,
)

flow = (
    Workflow(
        "daily-sales",
        description="Extracts yesterday's sales, summarises each region, loads the rows.",
        owner="data-eng",
        tags=["sales", "nightly"],
        run_strategy=Parallel(4),
        timeout="1h",
        params={
            "day": Param(type="date", expr="today() - days(1)", description="the sales day"),
            "regions": Param(type="list", default=["emea", "apac", "amer"]),
        },
        triggers=[
            Cron("0 6 * * *", id="morning", timezone="Europe/Paris", params={"day": "${today() - days(1)}"}),
            # A corrected day from the ERP reruns that day.
            Signals(
                Signal("sales_corrected", match={"source": "erp"}),
                id="corrections",
                params={"day": "${signals.sales_corrected.date}"},
            ),
        ],
    )
    .step(
        Shell(
            "extract",
            command='echo "extracting sales of ${params.day}" && echo rows=120 >> "$LEGATO_OUTPUTS"',
            outputs=["rows"],
            retry=Retry(error=2, backoff=Backoff(type="fixed", initial="2s")),
            timeout="10m",
        )
    )
    .step(
        Foreach(
            "per-region",
            over="params.regions",
            as_="region",
            concurrency=2,
            after=["extract"],
            steps=[Shell("summarise", command="echo summarising ${params.region} for ${params.day}")],
        )
    )
    .step(
        Python(
            "load",
            "examples.code.sales_steps:load",
            after=["per-region"],
            params={"rows": "${steps.extract.outputs.rows}"},
            outputs=["loaded", "day"],
        )
    )
    .step(
        Shell(
            "announce",
            command="echo loaded ${steps.load.outputs.loaded} rows of ${steps.load.outputs.day}",
            after=["load"],
            publish_signals=[Publish("sales_loaded", params={"date": "${params.day}"})],
        )
    )
)
