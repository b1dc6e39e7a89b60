{
 "key": "8c406635d5fd3ff6",
 "signature": "RjlAz53NxB695M07yk353TPMfF2QNwWkGMpJ+z1R5djEv3l/hzHqnOTArQPZHZ7hwp7M4yX6iPIrIpAoVFlSAQ=="
}
