{
 "key": "228cf2f92d6bc34c",
 "signature": "qw4A6TIgj0g9DdjnuLU20EOJ+3VCslV2RZQ35kLiXunLzCorA9LteGfOhaiY0uAVug89AOSbUoSXGORFtnwaAA=="
}
