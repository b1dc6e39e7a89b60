{
 "key": "228cf2f92d6bc34c",
 "signature": "Opo0PiSC9dJPmj9r11UK9d+CQszqY1OJefv+43Xp+Fn6ayH4GBDls28G056F3cSHAQ3gdJOwzayYJSYQYcQqDQ=="
}
