"""Crash points: each function killed (-9) right after each step, then redelivered; the
end state must be the crash-free one. injector.py is what runs inside the function
process; scenario.py drives the whole loop and compares."""
