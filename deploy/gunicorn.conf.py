# gunicorn settings for the Sora gateway. The supervisor starts the gateway itself; use this
# file to run a listener by hand or from your own process manager:
#
#   SORA_CONFIG=/etc/sora/host-config.yaml SORA_LISTENER=https \
#       gunicorn -c deploy/gunicorn.conf.py 'sora.gateway.app:create_app()'
#
# (a gateway started this way needs a running `sora-supervisor start`: it is the broker.)
from sora.gateway.gunicorn_conf import *  # noqa: F401,F403
