{
 "key": "228cf2f92d6bc34c",
 "signature": "S1b6wzz34e0to1SNngdRFa0QZczGZi2bnbBEsvu8DehtGS1Ff3Vjy9p2UogGH9+wxH2Jc8jyp9t3vbjyujjfAw=="
}
