"""OpenStack integration: devassign behind an unmodified Nova (docs/openstack.md).

``nova_filter`` runs inside nova-scheduler and ``extra_specs`` inside nova-api, so they import
Nova only when Nova loads them; ``listener`` runs on its own (``devassign nova-listener``).
"""
