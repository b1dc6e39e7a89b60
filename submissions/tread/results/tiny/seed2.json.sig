{
 "key": "8c406635d5fd3ff6",
 "signature": "SDpNwp9hGas+C1lHd8FQi6C6foe9GE8oT6eJnG10khPS09y2y7OGb0XqpIi2U5nXRhe2CPG+SgAFiizqvQt6DA=="
}
