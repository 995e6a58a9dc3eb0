"""`pinrec rehearse`: a week of production in minutes, with one fault injected per day.

    runner.py      the day loop: land the day's events, replay the next day's, run pinrec_daily
                   through the real Airflow scheduler, inject the fault, check the invariants
    services.py    what runs throughout: moto S3 + Tansu (s3 engine), `pinrec stream consume`,
                   `pinrec serve`, an acknowledging producer, background API traffic
    faults.py      the faults, one function each
    invariants.py  the checks made after every day (pure where possible)
    report.py      JSON + Markdown report
"""
