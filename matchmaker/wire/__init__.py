"""The AMQP wire: RabbitMQ topology and connections, the frame codec, publisher confirms and
the push stage. The only package that imports pika."""
