"""The supervisor <-> worker link: what the two processes of a pod slot tell each other.

    messages.py  the typed messages both ways, and their one encoding (pure)
    pipe.py      frames over the worker's pipe: send, receive, and the worker's `Outbox`
    board.py     a little shared memory per worker: which entries it holds, which handlers
                 run since when, until when the pod's leases are confirmed
    exits.py     the exit codes of a worker process and what they mean (pure)

Both sides import it; it imports nothing else from the runtime, so neither side's internals
leak into the other.
"""
