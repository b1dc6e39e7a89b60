{
 "key": "228cf2f92d6bc34c",
 "signature": "g2HBCXBaEeNURwDhIvcKcWFlhUXQLEQrorZfK6KIU8Wx2tNiiGw1ns2jUqU0WNas63f3I34JhKus2LPJGmeTBA=="
}
