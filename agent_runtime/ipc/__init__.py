"""The supervisor <-> worker link: what the two processes of a pod slot tell each other.

    pipe.py   messages over the worker's pipe: one frame per event-loop iteration (`Outbox`)
    board.py  a little shared memory per worker: which entries it holds, which handlers run
              since when, until when the pod's leases are confirmed

Both sides import it; it imports nothing from the runtime but the foundation (contract,
config, errors), so neither side's internals leak into the other.
"""
