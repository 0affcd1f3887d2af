"""Evaluation: the sequences and method rows (`sequences`), scoring with the metric syncers (`scoring`,
`metric_syncers`), causal generation (`generation`), drift (`drift`), the reports and plots (`report`, `plots`),
and the two commands: `msync eval-sync` (`sync_eval`) and `msync eval` (`quality`)."""
