"""promptmill: Kafka-native prompts-as-a-service."""
