{
 "key": "0551c8948f5b38e6",
 "signature": "69Lt8jHtQWgKM+REvtZLWU7dyaGM9f+irPXhoUqEXXvSNprIxoLx5kcY3euHk5jPLoRYvhXArc9dPPTXyVGFAg=="
}
