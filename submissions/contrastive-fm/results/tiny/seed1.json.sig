{
 "key": "228cf2f92d6bc34c",
 "signature": "2KX6OIIrBBKNIR+GJZXEZCdlfR6ZmL8Dca8T3xfShEhYRsN6KIRg3xBzjcHuE3gzUZl0tzd294XDwQ3VOClkDQ=="
}
