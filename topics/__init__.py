"""Where records flow: the topic catalog, Kafka connection options, and the admin API."""

from topics.catalog import ConsumerGroup, TopicCatalog, TopicKind, TopicSpec
from topics.connection import KafkaConnection

__all__ = ["ConsumerGroup", "KafkaConnection", "TopicCatalog", "TopicKind", "TopicSpec"]
