"""Everything that talks to Kafka as a client or runs a broker: one client factory with the auth settings, topic
admin, the reachability check, librdkafka statistics, the local KRaft broker.
"""
