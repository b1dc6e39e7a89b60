{
 "key": "228cf2f92d6bc34c",
 "signature": "bZ3iezMXGriLa8SFOpphGXOO97v9Aq+JUH7M4GyjutI7VIbN9rMQ4/jlsbD73FeCozZ35OHTkdXhxw1PcCreBw=="
}
