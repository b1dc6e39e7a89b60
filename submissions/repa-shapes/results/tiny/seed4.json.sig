{
 "key": "8c406635d5fd3ff6",
 "signature": "GH3k8yUqM1Lb1+mEu+bld9zgN8cZ4PeuAHOkBUwqFyZJfCv88cCiUmf1dOI3QLxwcf5TWBZ0eqx9Xbj+zwwlCQ=="
}
