"""The serving layer: the Flask app factory and blueprints that merge batch and real-time views."""
