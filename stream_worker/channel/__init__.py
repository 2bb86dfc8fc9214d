"""The model channel between trainer and workers: announcements on model-updates, their verification and the
workers' watcher, checkpoints carried through Kafka.
"""
