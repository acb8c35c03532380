"""Small pieces every API domain uses: errors, dependencies, pagination, uploads."""
