"""The fault and adversarial suite (issue 9): each test injects a fault or sends bad input a bounded number
of times and checks that nothing is lost. ``pytest tests/faults`` prints the table of ``docs/reliability.md``
at the end of the run."""
