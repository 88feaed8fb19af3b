"""One warm worker process: it imports the handlers, opens its connections, then runs tasks.

    process.py        the process's entry point (signals, logging, OOM score, exit codes)
    worker.py         `Worker`: warm-up, the intake loop (free slots, suspects alone), drain
    execution.py      runs one delivery to its recorded outcome (result, retry, dead letter)
    task_handlers.py  loads the user's `module:function` handlers and calls them
    lifeline.py       a thread that ends the process when the supervisor is gone or the leases
                      would lapse
    stats.py          metric deltas shipped to the supervisor with each heartbeat

Builds on the queue, the database, the SDK and the link to its supervisor (`agent_runtime.ipc`);
never imports the supervisor.
"""
