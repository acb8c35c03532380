"""The service's shared state: settings, database models and repositories, object storage and
the task queue client. Both ``api`` and ``worker`` import it; it never imports torch."""
