"""The speed layer: Spark Structured Streaming real-time views, alerts and late-event counting.

It reads the topics through `lambdaflow.kafka_source` and applies the view definitions of the shared kernel.
"""
