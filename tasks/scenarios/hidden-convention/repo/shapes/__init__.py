"""Areas and perimeters; every public function goes through shapes.registry."""
