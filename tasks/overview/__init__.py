"""What runs where: status and journals across the fleet."""
