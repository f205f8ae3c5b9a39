"""The speed layer: Spark Structured Streaming real-time views, alerts and late-event counting.

It reads the topics through `lambdaflow.kafka_source` and applies the view definitions of the shared kernel.
`queries` says what each topic's query keeps, `streams` starts them; a query reads through `source` and
writes through the exactly-once `sink`, which merges view rows (`increments`, `view_writes`), finds alerts
(`alerts`, `alert_candidates`) and publishes them (`alert_delivery`); `progress` reports on the queries.
"""
