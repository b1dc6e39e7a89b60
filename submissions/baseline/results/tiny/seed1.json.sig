{
 "key": "228cf2f92d6bc34c",
 "signature": "kFWQcqFmo7LxGnyFEhz8WlYRshxo4vktrCqTtk3lMkl+pGopoEOdGq+zyGhclnlRpO9as2qpG2FTuAJU8b/rDg=="
}
