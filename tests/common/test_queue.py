"""moodtunes.queue: the Redis transport the apps publish and consume through."""

from __future__ import annotations

import redis

from moodtunes import queue

TEST_QUEUE = "test-transport"


def test_every_app_uses_the_transport_that_keeps_its_client(database):
    app = queue.make_celery("test-transport")
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, queue.RedisChannel)


def test_only_redis_urls_get_the_transport():
    assert queue.broker_transport_for("redis://127.0.0.1:6379/0") == queue.REDIS_TRANSPORT
    assert queue.broker_transport_for("rediss://redis.example:6380/0") == queue.REDIS_TRANSPORT
    assert queue.broker_transport_for("sentinel://redis-a:26379;sentinel://redis-b:26379") is None


def test_one_client_serves_every_publish_of_a_channel(database, redis_server, monkeypatch):
    made = []
    init = redis.Redis.__init__

    def counted_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    app = queue.make_celery("test-transport")
    plain = redis.Redis.from_url(redis_server.url)
    plain.delete(TEST_QUEUE)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.client  # noqa: B018 (the consumer's own client, made once, not counted below)
        monkeypatch.setattr(redis.Redis, "__init__", counted_init)
        for i in range(20):
            channel._put(TEST_QUEUE, {"body": str(i), "properties": {}})
        assert len(made) <= 1  # kombu alone makes one per publish: 20
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again
    assert plain.llen(TEST_QUEUE) == 20
    plain.delete(TEST_QUEUE)


def test_the_client_follows_a_new_pool_after_a_disconnect(database):
    app = queue.make_celery("test-transport")
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as before:
            assert before.ping()
        channel._disconnect_pools()  # what kombu does when the connection drops
        with channel.conn_or_acquire() as after:
            assert after is not before and after.connection_pool is channel.pool
            assert after.ping()
