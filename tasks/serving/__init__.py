"""Model serving: releases deployed by run id, rolled across hosts behind the balancer, and called."""
